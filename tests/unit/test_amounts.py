from __future__ import annotations

import pytest

from hugepage_agent import amounts


@pytest.mark.parametrize(("text", "expected"), [
    ("12G", 12 * amounts.GIB), ("512M", 512 * amounts.MIB), ("1.5T", int(1.5 * amounts.TIB)),
    ("64KiB", 64 * amounts.KIB), ("100", 100), ("2 GB", 2 * amounts.GIB),
])
def test_parse_bytes(text: str, expected: int) -> None:
    assert amounts.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12X", "-1G", "1,5G", "twelve"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        amounts.parse_bytes(text)


def test_parse_duration() -> None:
    assert amounts.parse_duration("30s") == 30
    assert amounts.parse_duration("500ms") == 0.5
    assert amounts.parse_duration("2m") == 120
    assert amounts.parse_duration(5) == 5
    for bad in ("soon", True, -1, "1d"):
        with pytest.raises(ValueError):
            amounts.parse_duration(bad)


def test_amount_resolution() -> None:
    two_m = 2 * amounts.MIB
    assert amounts.parse_amount(5200).resolve_pages(two_m, 0) == 5200
    assert amounts.parse_amount("12G").resolve_pages(two_m, 0) == 6144
    assert amounts.parse_amount("3M").resolve_pages(two_m, 0) == 2  # rounded up
    assert amounts.parse_amount("50%").resolve_pages(two_m, 10 * amounts.GIB) == 2560
    with pytest.raises(ValueError):
        amounts.parse_amount("150%")
    with pytest.raises(ValueError):
        amounts.parse_amount(-3)
    with pytest.raises(ValueError):
        amounts.parse_amount("-3G")
    with pytest.raises(ValueError):
        amounts.parse_amount(5, allow_pages=False)


def test_page_sizes() -> None:
    assert amounts.parse_page_size("2M") == 2 * amounts.MIB
    assert amounts.parse_page_size("1G") == amounts.GIB
    assert amounts.parse_page_size("1GiB") == amounts.GIB
    with pytest.raises(ValueError):
        amounts.parse_page_size("4M")
