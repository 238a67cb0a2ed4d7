"""Plate formats as data: which positions of a registration hold letters and which digits.

A pattern is a string over `L` (letter) and `D` (digit). Matching a read against a
pattern may swap a character for its look-alike of the class the position needs
(0/O, 1/I, 8/B, 5/S, 2/Z, 6/G): only there, and only where the pattern says so; a
character with no look-alike of the needed class fails the pattern.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# US passenger serials by state: the current series and the older ones still common on
# the road, from the states' published formats (not fitted to any data set). Spacing and
# separators are not part of a registration. Vanity, specialty and county-coded plates
# outside these are read as they are.
US_SERIALS: dict[str, tuple[str, ...]] = {
    "AL": ("DLLDDDD", "DDLLDDD", "DDLDDDD"),
    "AK": ("LLLDDD",),
    "AZ": ("LLLDDDD", "LLLDDLL"),
    "AR": ("DDDLLL", "LLLDDL"),
    "CA": ("DLLLDDD",),
    "CO": ("LLLLDD", "DDDLLL", "LLLDDD"),
    "CT": ("LLDDDDD", "DDDLLL", "DLLLLD"),
    "DE": ("DDDDDD", "DDDDD"),
    "DC": ("LLDDDD",),
    "FL": ("LLLLDD", "DDDLLL", "LDDLLL", "LLLDDD"),
    "GA": ("LLLDDDD", "DDDDLLL"),
    "HI": ("LLLDDD",),
    "ID": ("DLDDDDD", "LDDDDDD", "DLDDDDL"),
    "IL": ("LLDDDDD", "LDDDDDD", "LLLDDD"),
    "IN": ("DDDLLL", "DDDL", "LLLDDD"),
    "IA": ("LLLDDD", "DDDLLL"),
    "KS": ("DDDLLL", "LLLDDD"),
    "KY": ("DDDLLL", "LLLDDD"),
    "LA": ("DDDLLL", "LLLDDD"),
    "ME": ("DDDDLL", "DDDLL"),
    "MD": ("DLLDDDD", "DLLLDD"),
    "MA": ("DLLLDD", "DLLDDD", "DDDLLL"),
    "MI": ("LLLDDDD", "DLLDDD", "LLLDDD"),
    "MN": ("DDDLLL", "LLLDDD"),
    "MS": ("LLLDDDD", "LLLDDD"),
    "MO": ("LLDLDL", "LLDDDD"),
    "MT": ("DDDDDDL", "DLDDDDL"),
    "NE": ("LLLDDD", "DLDDDD"),
    "NV": ("DDLDDD", "DDLLDD"),
    "NH": ("DDDDDDD", "DDDDDD", "LLLDDD"),
    "NJ": ("LDDLLL", "LLLDDL"),
    "NM": ("LLLDDD", "DDDLLL"),
    "NY": ("LLLDDDD",),
    "NC": ("LLLDDDD",),
    "ND": ("LLLDDD", "DDDLLL"),
    "OH": ("LLLDDDD",),
    "OK": ("LLLDDD", "DDDLLL"),
    "OR": ("DDDLLL", "LLLDDD"),
    "PA": ("LLLDDDD",),
    "RI": ("DDDDDD", "LLDDD", "DDDDD"),
    "SC": ("LLLDDD", "DDDLLL"),
    "SD": ("DLDDDD", "DDLDDD"),
    "TN": ("LDDDDL", "DDDLLL", "LLLDDD"),
    "TX": ("LLLDDDD", "LLDLDDD", "DDDLLL"),
    "UT": ("LDDDLL", "DDDLLL"),
    "VT": ("LLLDDD",),
    "VA": ("LLLDDDD",),
    "WA": ("LLLDDDD", "DDDLLL"),
    "WV": ("DLLDDD", "LDDDDD"),
    "WI": ("LLLDDDD", "DDDLLL"),
    "WY": ("DDDDDD", "DDDDDDD"),
}

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
    *(("US-" + state, "passenger serial", patterns) for state, patterns in US_SERIALS.items()),
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


def _fit(text: str, pattern: str, swaps_allowed: bool = True) -> tuple[str, int] | None:
    out, swaps = [], 0
    for ch, kind in zip(text, pattern, strict=True):
        if (kind == "L") == ch.isalpha():
            out.append(ch)
            continue
        swapped = (TO_LETTER if kind == "L" else TO_DIGIT).get(ch) if swaps_allowed else None
        if swapped is None:
            return None
        out.append(swapped)
        swaps += 1
    return "".join(out), swaps


# Names for several countries at once, usable wherever a region is.
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "EU": ("FR", "SK", "CZ", "PL", "DE", "UK", "IT", "ES", "HU", "HR"),  # the European rows (UK included)
}


def _in_regions(country: str, regions: tuple[str, ...]) -> bool:
    """Whether a table row's country ("FR", "US-CA") is in one of `regions` ("US" covers "US-CA",
    "EU" every European row)."""
    codes = [code for region in regions for code in REGION_GROUPS.get(region, (region,))]
    return not regions or any(country == code or country.startswith(code + "-") for code in codes)


@functools.cache
def patterns_of(regions: tuple[str, ...] = ()) -> dict[str, list[tuple[str, str, int]]]:
    """Pattern -> (country, format name, variants in its row) over the rows of `regions` (all if empty)."""
    table: dict[str, list[tuple[str, str, int]]] = {}
    for country, name, patterns in FORMATS:
        if _in_regions(country, regions):
            for pattern in patterns:
                table.setdefault(pattern, []).append((country, name, len(patterns)))
    return table


COUNTRIES_BY_PATTERN = patterns_of()
REGIONS = tuple(
    sorted({country for country, _, _ in FORMATS} | {c.split("-")[0] for c, _, _ in FORMATS} | set(REGION_GROUPS))
)


def shortest_layout(regions: tuple[str, ...] = ()) -> int:
    """The length of the shortest serial layout of `regions`: a shorter read is no registration there."""
    return min(len(pattern) for pattern in patterns_of(regions))


def best_format(text: str, regions: tuple[str, ...] = (), swaps: bool = True) -> FormatMatch | None:
    """The pattern of `regions` (every region if empty) the read fits with the fewest look-alike
    swaps; with `swaps` False, only a pattern it fits as it is."""
    table = patterns_of(regions)
    best: tuple[str, str, int] | None = None  # pattern, fitted text, swaps
    for pattern in table:
        if len(pattern) != len(text):
            continue
        fitted = _fit(text, pattern, swaps)
        if fitted is not None and (best is None or fitted[1] < best[2]):
            best = (pattern, fitted[0], fitted[1])
    if best is None:
        return None
    pattern, fitted_text, swapped = best
    owners = table[pattern]
    # Many US states share a layout: the text alone names the country, not the state.
    states = [c for c, _, _ in owners if "-" in c]
    countries = dict.fromkeys(c.split("-")[0] if len(states) > 1 and "-" in c else c for c, _, _ in owners)
    return FormatMatch(
        fitted_text,
        "/".join(countries),
        "; ".join(f"{c} {n}" for c, n, _ in owners),
        pattern,
        swapped,
        min(v for _, _, v in owners),
    )
