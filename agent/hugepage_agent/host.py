"""The only module that touches /proc, /sys, /etc and /run.

Every path is taken relative to one root prefix (`--root DIR`), for reads and
writes alike, so that the same code runs against a fake tree in unit tests and
against the real kernel in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
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
            raise HostError(f"cannot read {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e

    def read_optional(self, path: str) -> str | None:
        try:
            return self.path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e

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
            raise HostError(f"cannot write '{value}' to {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e

    def _open_dir(self, path: str, create: bool) -> int:
        """A descriptor for a directory under the root, reached one component at a
        time without following a symbolic link (O_NOFOLLOW): whoever can write
        some directory on the way cannot send the agent's writes elsewhere."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in [p for p in path.strip("/").split("/") if p]:
                if part == "..":
                    raise HostError(f"{path}: '..' in a path the agent writes")
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    nfd = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    made = True
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        made = False
                    nfd = os.open(part, flags, dir_fd=fd)
                    if made:  # 0755 whatever the umask (a unit's UMask=0077 applies)
                        os.fchmod(nfd, 0o755)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write_atomic(self, path: str, text: str, mode: int = 0o644,
                     group: int | None = None) -> None:
        """Replace a file atomically: a new temp file (O_EXCL, O_NOFOLLOW) in the
        same directory, written, given its mode (and group) through the
        descriptor, fsynced, renamed over the target. The directory is reached
        without following links; the temp file is never touched by name."""
        directory, name = os.path.split("/" + path.lstrip("/"))
        try:
            dfd = self._open_dir(directory, create=True)
        except OSError as e:
            raise HostError(f"cannot write {path}: {e.strerror or e} "
                            f"(a link or a missing directory on the way?)", errno=e.errno,
                            path=path) from e
        tmp = None
        try:
            for _ in range(100):
                candidate = f".{name}.{secrets.token_hex(4)}"
                try:
                    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                except FileExistsError:
                    continue
                tmp = candidate
                break
            else:
                raise HostError(f"cannot write {path}: no free temporary name")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                if group is not None:
                    os.fchown(f.fileno(), -1, group)
                os.fchmod(f.fileno(), mode)  # through the descriptor: never a swapped path
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            tmp = None
            os.fsync(dfd)
        except OSError as e:
            raise HostError(f"cannot write {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
            os.close(dfd)

    def file_mode(self, path: str) -> tuple[int, int] | None:
        """(permission bits, group) of a file under the root, or None."""
        try:
            st = os.lstat(self.path(path))
        except OSError:
            return None
        return stat.S_IMODE(st.st_mode), st.st_gid

    def untrusted(self, path: str) -> str | None:
        """Why a directory the agent would write into as root is not safe, or None:
        every component from / must be a real directory (not a link), owned by
        root and not writable by group or others."""
        current = self.root
        parts = [p for p in path.strip("/").split("/") if p]
        for i in range(len(parts) + 1):
            shown = "/" + "/".join(parts[:i])
            if i:
                current = current / parts[i - 1]
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                return None  # not there yet: nothing to write into
            except OSError as e:
                return f"{shown}: {e.strerror or e}"
            if stat.S_ISLNK(st.st_mode):
                return f"{shown} is a symbolic link"
            if not stat.S_ISDIR(st.st_mode):
                return f"{shown} is not a directory"
            if st.st_uid != 0:
                return f"{shown} is owned by uid {st.st_uid}, not root"
            if st.st_mode & 0o022 and not (i == 0 and not self.is_real):
                who = {0o020: "group", 0o002: "others", 0o022: "group and others"}
                return f"{shown} is writable by {who[st.st_mode & 0o022]}"
        return None

    def remove(self, path: str) -> bool:
        try:
            self.path(path).unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise HostError(f"cannot remove {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e

    def read_config(self, path: str) -> str | None:
        """A configuration file's text: None when missing; HostError for anything
        but a regular file (a FIFO would hang the reader) or text that is not UTF-8."""
        try:
            fd = os.open(self.path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except PermissionError as e:  # 0600: it may hold secrets (a model's --api-key)
            raise HostError(f"cannot read {path}: {e.strerror or e}", errno=e.errno,
                            path=path) from e
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostError(f"{path} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror or e}",
                            errno=e.errno, path=path) from e
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
