"""Plate text: from what the OCR returned to the registration we store.

A registration is compared and stored as uppercase ASCII letters and digits only;
the recogniser's raw text and confidence are kept beside it so that nothing the
model said is lost.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

PLATE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_KEEP = frozenset(PLATE_ALPHABET)

# Characters a plate font draws identically in many countries: compared as equal when
# scoring against annotations, never rewritten in what is stored.
_SAME_GLYPH = str.maketrans({"O": "0"})


def normalise(raw: str) -> str:
    """Uppercase letters and digits only; accents stripped (É -> E), all else dropped."""
    decomposed = unicodedata.normalize("NFKD", raw.upper())
    return "".join(ch for ch in decomposed if ch in _KEEP)


def same_plate(a: str, b: str) -> bool:
    """Whether two plate texts name the same registration, O and 0 folded together."""
    return normalise(a).translate(_SAME_GLYPH) == normalise(b).translate(_SAME_GLYPH)


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One plate read in one frame: what every sink receives."""

    source: str
    frame: int
    time: float
    plate: str
    raw_text: str
    confidence: float  # of the read as a whole: detector and OCR together
    ocr_confidence: float
    detector_confidence: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    detector_model: str
    ocr_model: str

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "frame": self.frame,
            "time": round(self.time, 3),
            "plate": self.plate,
            "confidence": round(self.confidence, 4),
            "box": [round(v, 1) for v in self.box],
            "raw_text": self.raw_text,
            "ocr_confidence": round(self.ocr_confidence, 4),
            "detector_confidence": round(self.detector_confidence, 4),
            "detector_model": self.detector_model,
            "ocr_model": self.ocr_model,
        }
