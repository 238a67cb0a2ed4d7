"""Plate text: from what the OCR returned to the registration we store.

A registration is compared and stored as uppercase ASCII letters and digits only;
the recogniser's raw text and confidence are kept beside it so that nothing the
model said is lost.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from anpr.formats import best_format

PLATE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_KEEP = frozenset(PLATE_ALPHABET)
MIN_PLATE_LENGTH = 2  # shorter strings are OCR noise, not a registration

# Characters a plate font draws identically in many countries: compared as equal when
# scoring against annotations, never rewritten in what is stored.
_SAME_GLYPH = str.maketrans({"O": "0"})


def normalise(raw: str) -> str:
    """Uppercase letters and digits only; accents stripped (É -> E), all else dropped."""
    decomposed = unicodedata.normalize("NFKD", raw.upper())
    return "".join(ch for ch in decomposed if ch in _KEEP)


def comparable(text: str) -> str:
    """A plate text as registrations are compared: normalised, O folded into 0."""
    return normalise(text).translate(_SAME_GLYPH)


def stored_forms(plate: str, regions: Sequence[str] = ()) -> tuple[str, ...]:
    """The forms under which the reader stores `plate` as someone types it: the normalised
    text (spaces, hyphens, case and accents gone), and, where that fits no serial layout of
    `regions` as typed, its fit with the fewest look-alike swaps, as the reader fits its
    reads (a typed 0 where the layout has a letter is stored as O). A text that fits a
    layout as typed is that registration only: another fit would be another vehicle's."""
    text = normalise(plate)
    match = best_format(text, tuple(regions))
    return tuple(dict.fromkeys([text, match.text] if match is not None else [text]))


def same_plate(a: str, b: str) -> bool:
    """Whether two plate texts name the same registration, O and 0 folded together."""
    return comparable(a) == comparable(b)


# Most registrations on the road follow their country's serial layout: a candidate that
# fits one is taken to be this many times likelier a priori than one that fits none,
# shared out among the variants of its format (a row listing 14 layouts admits 14 times
# the strings, truncated reads among them). Each look-alike swap the fit needs (0->O,
# 1->I...) halves the weight. Priors, stated once; not fitted to any data set.
FORMAT_PRIOR = 10.0
SWAP_COST = 2.0
TOP_CANDIDATES = 5


@dataclass(frozen=True, slots=True)
class PlateText:
    """The registration chosen from a recogniser's candidates."""

    plate: str
    confidence: float  # the chosen candidate's share of the candidates' probability
    candidates: tuple[tuple[str, float], ...]  # best first, probabilities summing to at most 1
    country: str | None  # of the matched format, e.g. "CZ" or "FR/SK/IT/HR"; None if none fits
    format: str | None  # the matched pattern over L (letter) and D (digit)


def choose_plate(
    candidates: Sequence[tuple[str, float]],
    top: int = TOP_CANDIDATES,
    regions: tuple[str, ...] = (),
    swaps: bool = True,
) -> PlateText:
    """Rescore text candidates with the plate formats of `regions` (all if empty) and keep the best `top`.

    A candidate that fits none of the region's layouts keeps its own probability (a
    vanity plate, a foreign car): it loses only to a fitting candidate the model finds
    about as likely. With `swaps` (for recognisers that cannot tell look-alikes apart,
    `PlateRecogniser.lookalike_swaps`), a candidate may be fitted to a layout by swapping
    look-alikes; without, only candidates that fit as read get the prior.
    """
    scored: dict[str, float] = {}
    formats: dict[str, tuple[str, str]] = {}
    for text, probability in candidates:
        text = normalise(text)
        if len(text) < MIN_PLATE_LENGTH:
            continue
        match = best_format(text, regions, swaps)
        weight = max(1.0, FORMAT_PRIOR / match.variants) / SWAP_COST**match.swaps if match else 1.0
        if match:
            text = match.text
            formats[text] = (match.country, match.pattern)
        scored[text] = scored.get(text, 0.0) + probability * weight
    if not scored:
        return PlateText("", 0.0, (), None, None)
    total = sum(scored.values())
    ranked = sorted(scored.items(), key=lambda kv: -kv[1])[:top]
    plate, score = ranked[0]
    country, pattern = formats.get(plate, (None, None))
    # Probabilities that all underflowed to 0 leave no shares to compute: every candidate gets 0.
    share = (lambda value: value / total) if total > 0 else (lambda value: 0.0)
    return PlateText(plate, share(score), tuple((t, share(v)) for t, v in ranked), country, pattern)
