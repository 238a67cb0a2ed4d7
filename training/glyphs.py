"""Real plate glyphs for the synthetic plates: characters cut from real plates.

The glyphs come from the public `openalpr/train-ocr` repository (AGPL-3.0, like the crop
sets): Tesseract sheets of plate characters of Belgium, Germany, the Netherlands, Serbia,
France (a `.tif` page and its `.box` file of character boxes each), and
single-character crops of UK and Brazilian plates (`gb/chars`, `br/chars`, labelled by
their file name's first character). A font drawn by a plate press, as cameras see it, is
what the synthetic plates' computer fonts are not.

    python -m training.glyphs REPO_GIT_DIR   # writes training/data/glyphs.npz and glyphs.json

REPO_GIT_DIR is a clone's git folder (no work tree is needed: files are read with
`git show`). Each glyph is kept grey, dark on light, `GLYPH_HEIGHT` px high and at most
`GLYPH_HEIGHT` wide, with its font (`DE`, `GB-chars`, ...). Brazilian crops named after a
plate of the crop sets' test splits are left out. `training.synth` sets them in a line
(`_glyph_text_image`).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from anpr.reading.plates import PLATE_ALPHABET
from anpr.reading.weights import _sha256

GLYPH_HEIGHT = 48
# A character's strokes cover part of its box: a crop that is mostly dark (a block of plate
# border, a glyph light on dark that did not turn round) or almost blank is no glyph.
INK_SHARE = (0.1, 0.6)
DATA = Path(__file__).resolve().parent / "data"
BANK = DATA / "glyphs.npz"
# (font, Tesseract sheet without its extension) in openalpr/train-ocr
SHEETS = (
    ("BE", "eu/input/leu.belgium.exp0"),
    ("DE", "eu/input/leu.germany.exp0"),
    ("NL", "eu/input/leu.netherlands.exp0"),
    ("RS", "eu/input/leu.serbia.exp0"),
    ("FR", "fr/input/leu.france.exp0"),
)  # gb/input's and br/input's sheets are made of gb/chars' and br/chars' crops, taken one by one below
CROP_FOLDERS = (("GB-chars", "gb/chars"), ("BR-chars", "br/chars"))
TEST_LABELS = (Path("../shared/datasets/openalpr-br-crops/labels.csv"),)


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(repo), *args], capture_output=True, check=True).stdout


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("not an image")
    return image


def normalise_glyph(grey: np.ndarray) -> np.ndarray:
    """Dark on light, GLYPH_HEIGHT high, at most as wide, contrast stretched."""
    grey = grey.astype(np.float32)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() < grey.mean():  # light on dark: turned round
        grey = 255 - grey
    low, high = np.percentile(grey, 2), np.percentile(grey, 98)
    grey = np.clip((grey - low) / max(high - low, 1.0), 0, 1) * 255
    width = min(GLYPH_HEIGHT, max(4, round(grey.shape[1] * GLYPH_HEIGHT / max(1, grey.shape[0]))))
    return cv2.resize(grey, (width, GLYPH_HEIGHT), interpolation=cv2.INTER_AREA).astype(np.uint8)


def is_glyph(glyph: np.ndarray) -> bool:
    ink = float((glyph < 128).mean())
    return INK_SHARE[0] <= ink <= INK_SHARE[1]


def _test_plates() -> set[str]:
    plates = set()
    for path in TEST_LABELS:
        with path.open(newline="") as file:
            plates |= {row["plate"] for row in csv.DictReader(file) if row["split"] == "test"}
    return plates


def extract(repo: Path) -> tuple[list[np.ndarray], list[str], list[str], dict]:
    """Every glyph of the repository: images, characters, fonts, and what was taken."""
    images: list[np.ndarray] = []
    characters: list[str] = []
    fonts: list[str] = []
    taken: dict[str, int] = {}

    def keep(glyph: np.ndarray, character: str, font: str) -> None:
        normalised = normalise_glyph(glyph)
        if is_glyph(normalised):
            images.append(normalised)
            characters.append(character)
            fonts.append(font)
            taken[font] = taken.get(font, 0) + 1

    for font, sheet in SHEETS:
        page = _decode(_git(repo, "show", f"HEAD:{sheet}.tif"))
        height = page.shape[0]
        for line in _git(repo, "show", f"HEAD:{sheet}.box").decode().splitlines():
            parts = line.split()
            if len(parts) < 5 or parts[0] not in PLATE_ALPHABET:
                continue
            x1, y1, x2, y2 = (int(v) for v in parts[1:5])  # Tesseract boxes: origin at the bottom left
            glyph = page[height - y2 : height - y1, x1:x2]
            if glyph.size:
                keep(glyph, parts[0], font)
    excluded = _test_plates()
    for font, folder in CROP_FOLDERS:
        for name in _git(repo, "ls-tree", "--name-only", "HEAD", f"{folder}/").decode().splitlines():
            stem = Path(name).stem
            character = stem[:1].upper()
            if Path(name).suffix.lower() not in (".jpg", ".png") or character not in PLATE_ALPHABET:
                continue
            if stem.split("_")[-1] in excluded:
                continue
            try:
                keep(_decode(_git(repo, "show", f"HEAD:{name}")), character, font)
            except ValueError:  # a file that is no image (a few are cut short)
                continue
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    return images, characters, fonts, {"repository": "openalpr/train-ocr", "commit": commit, "glyphs": taken}


def save(images: list[np.ndarray], characters: list[str], fonts: list[str], source: dict, out: Path = BANK) -> None:
    widths = np.array([image.shape[1] for image in images], np.int16)
    padded = np.full((len(images), GLYPH_HEIGHT, GLYPH_HEIGHT), 255, np.uint8)
    for slot, image in zip(padded, images, strict=True):
        slot[:, : image.shape[1]] = image
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=padded, widths=widths, characters=np.array(characters), fonts=np.array(fonts))
    digest = _sha256(out)
    provenance = {**source, "file": out.name, "sha256": digest, "licence": "AGPL-3.0 (openalpr/train-ocr)"}
    provenance["command"] = "python -m training.glyphs REPO_GIT_DIR"
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")


@dataclass(frozen=True)
class GlyphBank:
    """The real glyphs, by font and character."""

    images: np.ndarray  # (N, GLYPH_HEIGHT, GLYPH_HEIGHT) grey, dark on light, left-aligned
    widths: np.ndarray  # (N,) each glyph's width
    characters: np.ndarray  # (N,) str
    fonts: np.ndarray  # (N,) str

    @property
    def font_names(self) -> list[str]:
        return sorted(set(self.fonts.tolist()))

    def glyph(self, rng: np.random.Generator, font: str, character: str) -> np.ndarray:
        """A glyph of `character` in `font`, or in another font where `font` has none."""
        found = np.flatnonzero((self.fonts == font) & (self.characters == character))
        if not len(found):
            found = np.flatnonzero(self.characters == character)
        index = int(found[rng.integers(len(found))])
        return self.images[index, :, : self.widths[index]]


@cache
def load_bank(path: Path = BANK) -> GlyphBank:
    with np.load(path) as data:
        return GlyphBank(data["images"], data["widths"], data["characters"], data["fonts"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="the git folder of a clone of openalpr/train-ocr")
    parser.add_argument("--out", type=Path, default=BANK)
    args = parser.parse_args(argv)
    images, characters, fonts, source = extract(args.repo)
    save(images, characters, fonts, source, args.out)
    print(f"wrote {args.out}: {len(images)} glyphs, {source['glyphs']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
