"""The only module that touches /proc, /sys, /etc and /run.

Every path is taken relative to one root prefix (`--root DIR`), for reads and
writes alike, so that the same code runs against a fake tree in unit tests and
against the real kernel in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
from pathlib import Path

from hugepage_agent.errors import HostError


class Host:
    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    @property
    def is_real(self) -> bool:
        return self.root.resolve() == Path("/")

    def path(self, path: str) -> Path:
        """The real location of a host path under the root prefix."""
        return self.root / path.lstrip("/")

    def exists(self, path: str) -> bool:
        return self.path(path).exists()

    def read(self, path: str) -> str:
        try:
            return self.path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}") from e

    def read_optional(self, path: str) -> str | None:
        try:
            return self.path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}") from e

    def read_int(self, path: str) -> int:
        text = self.read(path).strip()
        try:
            return int(text.split()[0])
        except (ValueError, IndexError) as e:
            raise HostError(f"{path}: expected a number, found '{text}'") from e

    def glob(self, pattern: str) -> list[str]:
        """Host paths (with the root prefix taken off) matching pattern, sorted."""
        base = str(self.root).rstrip("/")
        found = glob.glob(str(self.path(pattern)))
        return sorted("/" + os.path.relpath(p, base or "/") for p in found)

    def write_knob(self, path: str, value: str) -> None:
        """Write a kernel knob (/proc/sys, /sys): a single write, no temp file."""
        try:
            with open(self.path(path), "w", encoding="ascii") as f:
                f.write(value)
        except OSError as e:
            raise HostError(f"cannot write '{value}' to {path}: {e.strerror or e}") from e

    def write_atomic(self, path: str, text: str, mode: int = 0o644) -> None:
        """Replace a file atomically: temp file in the same directory, fsync, rename."""
        target = self.path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as e:
            raise HostError(f"cannot write {path}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fchmod(f.fileno(), mode)  # through the descriptor: never a swapped path
                os.fsync(f.fileno())
            os.replace(tmp, target)
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise HostError(f"cannot write {path}: {e.strerror or e}") from e

    def remove(self, path: str) -> bool:
        try:
            self.path(path).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise HostError(f"cannot remove {path}: {e.strerror or e}") from e

    def read_config(self, path: str) -> str | None:
        """A configuration file's text: None when missing; HostError for anything
        but a regular file (a FIFO would hang the reader) or text that is not UTF-8."""
        try:
            fd = os.open(self.path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostError(f"{path} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}") from e
        finally:
            os.close(fd)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HostError(f"{path} is not UTF-8 text (byte {e.start})") from e

    def stat_size(self, path: str) -> int | None:
        """Size of a file given by an absolute path (model files: not under the root)."""
        try:
            return os.stat(path).st_size
        except OSError:
            return None
