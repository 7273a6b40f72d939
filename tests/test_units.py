from __future__ import annotations

import pytest

from hugepage_agent import units


@pytest.mark.parametrize(("text", "expected"), [
    ("12G", 12 * units.GIB), ("512M", 512 * units.MIB), ("1.5T", int(1.5 * units.TIB)),
    ("64KiB", 64 * units.KIB), ("100", 100), ("2 GB", 2 * units.GIB),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert units.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12X", "-1G", "1,5G", "twelve"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        units.parse_bytes(text)


def test_parse_duration() -> None:
    assert units.parse_duration("30s") == 30
    assert units.parse_duration("500ms") == 0.5
    assert units.parse_duration("2m") == 120
    assert units.parse_duration(5) == 5
    for bad in ("soon", True, -1, "1d"):
        with pytest.raises(ValueError):
            units.parse_duration(bad)


def test_amount_resolution() -> None:
    two_m = 2 * units.MIB
    assert units.parse_amount(5200).resolve_pages(two_m, 0) == 5200
    assert units.parse_amount("12G").resolve_pages(two_m, 0) == 6144
    assert units.parse_amount("3M").resolve_pages(two_m, 0) == 2  # rounded up
    assert units.parse_amount("50%").resolve_pages(two_m, 10 * units.GIB) == 2560
    with pytest.raises(ValueError):
        units.parse_amount("150%")
    with pytest.raises(ValueError):
        units.parse_amount(-3)
    with pytest.raises(ValueError):
        units.parse_amount("-3G")
    with pytest.raises(ValueError):
        units.parse_amount(5, allow_pages=False)


def test_page_sizes() -> None:
    assert units.parse_page_size("2M") == 2 * units.MIB
    assert units.parse_page_size("1G") == units.GIB
    assert units.parse_page_size("1GiB") == units.GIB
    with pytest.raises(ValueError):
        units.parse_page_size("4M")
