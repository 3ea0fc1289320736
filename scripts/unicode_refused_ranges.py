"""The code points a payment destination may not hold, as a PostgreSQL regex bracket.

A destination is an account reference a person reads and a rail matches byte for byte: a
character that shows nothing, or shows as something else, makes two different destinations
look alike. Refused by class, in the Unicode General_Category of each code point:

    Cc  controls (C0, DEL, C1)                 Cf  format (bidi marks, zero-width, soft
    Zl  line separator (U+2028)                    hyphen, BOM, tags U+E0001...)
    Zp  paragraph separator (U+2029)           Co  private use
    Cn  unassigned (and noncharacters)         Cs  surrogates (never text: PostgreSQL refuses
                                                   them before any check runs; not listed)

U+0000 is not listed either: PostgreSQL text cannot hold it (refused as 22P05 before any
check). The categories come from Python's `unicodedata`, whose Unicode version is that of the
Python running this script; migration 0013 was generated with Unicode 14.0.0 (Python 3.11)
and holds the ranges as they were then. A character assigned in a later Unicode version is
unassigned (Cn) in those ranges, so it stays refused until a new migration regenerates them.

    python scripts/unicode_refused_ranges.py     # the bracket, 8 ranges to a line
"""

from __future__ import annotations

import sys
import unicodedata

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Cs"})
SURROGATES = range(0xD800, 0xE000)


def refused_ranges() -> list[tuple[int, int]]:
    """Inclusive (first, last) ranges of the refused code points PostgreSQL text can hold
    (U+0000 and the surrogates it cannot hold are left out), at this Python's Unicode
    version."""
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for cp in range(1, sys.maxunicode + 2):
        refused = (cp <= sys.maxunicode and cp not in SURROGATES
                   and unicodedata.category(chr(cp)) in REFUSED_CATEGORIES)
        if refused and start is None:
            start = cp
        elif not refused and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def escape(cp: int) -> str:
    """A code point as a PostgreSQL ARE escape: \\uXXXX, or \\UXXXXXXXX beyond the BMP."""
    return f"\\u{cp:04X}" if cp <= 0xFFFF else f"\\U{cp:08X}"


def bracket_lines(ranges: list[tuple[int, int]], per_line: int = 8) -> list[str]:
    """The ranges as the inside of a regex bracket, `per_line` ranges to a line."""
    items = [escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges]
    return ["".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]


if __name__ == "__main__":
    print(f"-- Unicode {unicodedata.unidata_version}: {len(refused_ranges())} ranges")
    for line in bracket_lines(refused_ranges()):
        print(line)
