"""Plate formats as data: which positions of a registration hold letters and which digits.

A pattern is a string over `L` (letter) and `D` (digit). Matching a read against a
pattern may swap a character for its look-alike of the class the position needs
(0/O, 1/I, 8/B, 5/S, 2/Z, 6/G): only there, and only where the pattern says so; a
character with no look-alike of the needed class fails the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

# The layouts of current and older series, by country. Registrations that are not in
# a serial layout (vanity plates, diplomatic, trade) match none and are left as read.
FORMATS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("FR", "SIV", ("LLDDDLL",)),
    ("FR", "FNI", ("DDDLLDD", "DDDLLLDD", "DDDDLLDD", "DDDDLLLDD", "DDLLLDD")),
    ("SK", "2 letters district", ("LLDDDLL",)),
    ("CZ", "digit letter digit", ("DLDDDDD", "DLLDDDD")),
    ("PL", "district + serial", ("LLDDDDD", "LLLDDDD", "LLDDDLL", "LLLDDLL", "LLLDLDD")),
    (
        "DE",
        "district, letters, digits",
        tuple(
            "L" * letters + "D" * digits
            for letters in range(2, 6)
            for digits in range(1, 5)
            if 4 <= letters + digits <= 8
        ),
    ),
    ("UK", "2001 series", ("LLDDLLL",)),
    ("IT", "1994 series", ("LLDDDLL",)),
    ("ES", "2000 series", ("DDDDLLL",)),
    ("HU", "1990 series", ("LLLDDD",)),
    ("HR", "city + serial", ("LLDDDLL", "LLDDDDLL", "LLDDDL")),
    ("BR", "old", ("LLLDDDD",)),
    ("BR", "Mercosur", ("LLLDLDD",)),
)

TO_LETTER = {"0": "O", "1": "I", "8": "B", "5": "S", "2": "Z", "6": "G"}
TO_DIGIT = {letter: digit for digit, letter in TO_LETTER.items()}


@dataclass(frozen=True, slots=True)
class FormatMatch:
    text: str  # the read with look-alikes swapped where the pattern needs it
    country: str  # every country whose table has this pattern, e.g. "FR/SK/IT/HR": text alone can't tell
    name: str
    pattern: str
    swaps: int  # characters changed to fit the pattern
    variants: int  # patterns in the most specific row listing this one: a row with many admits more noise


def _fit(text: str, pattern: str) -> tuple[str, int] | None:
    out, swaps = [], 0
    for ch, kind in zip(text, pattern, strict=True):
        if (kind == "L") == ch.isalpha():
            out.append(ch)
            continue
        swapped = (TO_LETTER if kind == "L" else TO_DIGIT).get(ch)
        if swapped is None:
            return None
        out.append(swapped)
        swaps += 1
    return "".join(out), swaps


COUNTRIES_BY_PATTERN: dict[str, list[tuple[str, str, int]]] = {}
for _country, _name, _patterns in FORMATS:
    for _pattern in _patterns:
        COUNTRIES_BY_PATTERN.setdefault(_pattern, []).append((_country, _name, len(_patterns)))


def best_format(text: str) -> FormatMatch | None:
    """The pattern the read fits with the fewest look-alike swaps, or None."""
    best: tuple[str, str, int] | None = None  # pattern, fitted text, swaps
    for pattern in COUNTRIES_BY_PATTERN:
        if len(pattern) != len(text):
            continue
        fitted = _fit(text, pattern)
        if fitted is not None and (best is None or fitted[1] < best[2]):
            best = (pattern, fitted[0], fitted[1])
    if best is None:
        return None
    pattern, fitted_text, swaps = best
    owners = COUNTRIES_BY_PATTERN[pattern]
    return FormatMatch(
        fitted_text,
        "/".join(dict.fromkeys(c for c, _, _ in owners)),
        "; ".join(f"{c} {n}" for c, n, _ in owners),
        pattern,
        swaps,
        min(v for _, _, v in owners),
    )
