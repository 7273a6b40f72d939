"""Parsing of sizes, shares, durations and page sizes. Pure functions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

_SUFFIX = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}

PAGE_SIZES = {"2M": 2 * MIB, "1G": GIB}
MAX_BYTES = 1 << 60  # far above any machine: larger values are typos or attacks


def parse_bytes(text: str) -> int:
    """'12G' -> bytes. Binary units; an optional 'B' or 'iB' is accepted."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a size (expected e.g. 512M, 12G, 1.5T)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(value) or value > MAX_BYTES:
        raise ValueError(f"'{text[:40]}' is too large")
    return int(value)


def parse_percent(text: str) -> float | None:
    """'2%' -> 0.02; None when the text is not a percentage."""
    m = _PERCENT_RE.match(text)
    return float(m.group(1)) / 100.0 if m else None


def parse_duration(value: object) -> float:
    """'30s', '500ms', '2m' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError as e:
            raise ValueError("the duration is too large") from e
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"'{value}' is not a duration (expected e.g. 30s, 500ms, 2m)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_page_size(text: str) -> int:
    key = text.strip().upper().replace("IB", "").replace("B", "")
    if key not in PAGE_SIZES:
        raise ValueError(f"'{text}' is not a supported page size (expected 2M or 1G)")
    return PAGE_SIZES[key]


def page_size_name(size: int) -> str:
    return "1G" if size == GIB else "2M" if size == 2 * MIB else f"{size // KIB}K"


def human_bytes(n: float) -> str:
    for unit, div in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def pages_for(size_bytes: int, page_size: int) -> int:
    """Whole pages needed to hold size_bytes."""
    return -(-size_bytes // page_size)


@dataclass(frozen=True)
class Amount:
    """A size given either as bytes, as a page count, or as a share of something."""

    bytes: int | None = None
    pages: int | None = None
    share: float | None = None

    def resolve_pages(self, page_size: int, whole: int) -> int:
        """Pages for this amount; `whole` is what a share is a share of, in bytes."""
        if self.pages is not None:
            return self.pages
        if self.bytes is not None:
            return pages_for(self.bytes, page_size)
        assert self.share is not None
        return pages_for(int(whole * self.share), page_size)

    def resolve_bytes(self, page_size: int, whole: int) -> int:
        if self.pages is not None:
            return self.pages * page_size
        if self.bytes is not None:
            return self.bytes
        assert self.share is not None
        return int(whole * self.share)


def parse_amount(value: object, *, allow_pages: bool = True, allow_share: bool = True) -> Amount:
    """A TOML value: an integer page count, '12G', or '90%'."""
    if isinstance(value, bool):
        raise ValueError("expected a size, not true/false")
    if isinstance(value, int):
        if not allow_pages:
            raise ValueError("expected a size with a unit such as 12G")
        if value < 0:
            raise ValueError("a page count cannot be negative")
        if value > MAX_BYTES:
            raise ValueError("the page count is too large")
        return Amount(pages=value)
    if isinstance(value, str):
        share = parse_percent(value)
        if share is not None:
            if not allow_share:
                raise ValueError("a percentage is not allowed here")
            if share > 1.0:
                raise ValueError(f"'{value}' is more than 100%")
            return Amount(share=share)
        if value.strip().startswith("-"):
            raise ValueError("a size cannot be negative")
        return Amount(bytes=parse_bytes(value))
    raise ValueError(f"expected a size such as 12G{', a page count' if allow_pages else ''}"
                     f"{' or a percentage' if allow_share else ''}")
