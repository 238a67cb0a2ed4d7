"""Synthetic plates: registrations of many layouts rendered the way plates look.

Every plate is drawn from a seeded generator, so a training run sees the same plates
each time. What varies, and why:

- the registration: a serial layout of `anpr.formats` (EU, BR, each US state) or a
  free string (vanity plates), with spaces, dashes or dots between groups;
- one or two lines; dark on light or light on dark; a plain, gradient or busy
  background (US plates carry pictures);
- clutter that is not the registration: a state name or slogan above and below, an EU
  blue band with its country letters, stickers, bolts, a frame;
- the font (six families shipped in PyPI packages and matplotlib, condensed or not).

Camera effects (perspective, blur, low resolution, noise, JPEG, glare) are added later,
in `training.augment`, to synthetic and real crops alike.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anpr.formats import FORMATS
from anpr.reading.plates import PLATE_ALPHABET
from training.glyphs import load_bank

LETTERS = PLATE_ALPHABET[:26]
DIGITS = PLATE_ALPHABET[26:]

# (package, file) of each font; `matplotlib` ships DejaVu, the rest are the `train` extra.
FONT_FILES = (
    ("font_fjallaone", "files/FjallaOne-Regular.ttf"),
    ("font_source_sans_pro", "files/SourceSansPro-Bold.ttf"),
    ("font_source_sans_pro", "files/SourceSansPro-Black.ttf"),
    ("font_source_sans_pro", "files/SourceSansPro-Semibold.ttf"),
    ("ttf_opensans", "ttf/OpenSans-Bold.ttf"),
    ("ttf_opensans", "ttf/OpenSans-ExtraBold.ttf"),
    ("font_lato", "files/Lato-Black.ttf"),
    ("font_lato", "files/Lato-Bold.ttf"),
    ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans-Bold.ttf"),
    ("matplotlib", "mpl-data/fonts/ttf/DejaVuSansMono-Bold.ttf"),
    ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans.ttf"),
)
CLUTTER_WORDS = [
    "ALASKA",
    "TEXAS",
    "OHIO",
    "IOWA",
    "UTAH",
    "MAINE",
    "IDAHO",
    "NEVADA",
    "OREGON",
    "KANSAS",
    "GEORGIA",
    "FLORIDA",
    "VIRGINIA",
    "ARIZONA",
    "MONTANA",
    "NEW",
    "YORK",
    "CALIFORNIA",
    "ILLINOIS",
    "MICHIGAN",
    "INDIANA",
    "KENTUCKY",
    "VERMONT",
    "COLORADO",
    "DELAWARE",
    "ARKANSAS",
    "MISSOURI",
    "NEBRASKA",
    "WYOMING",
    "ALABAMA",
    "LOUISIANA",
    "OKLAHOMA",
    "WISCONSIN",
    "MINNESOTA",
    "MARYLAND",
    "PARANA",
    "CURITIBA",
    "SAO",
    "PAULO",
    "BRASIL",
    "RIO",
    "DE",
    "JANEIRO",
    "LIVE",
    "FREE",
    "OR",
    "DIE",
    "SUNSHINE",
    "STATE",
    "EMPIRE",
    "STATE",
    "GREAT",
    "LAKES",
    "LAND",
    "OF",
    "LINCOLN",
    "THE",
    "FIRST",
    "STATE",
    "GRAND",
    "CANYON",
    "FAMOUS",
    "POTATOES",
    "SHOW",
    "ME",
    "STATE",
    "DEALER",
    "AUTO",
    "MOTORS",
    "SERVICE",
    "2009",
    "2013",
    "2021",
    "MAY",
    "JUN",
    "SEPT",
    "DEC",
]
EU_BAND_CODES = ("F", "D", "CZ", "SK", "PL", "I", "E", "H", "HR", "GB", "NL", "B", "A", "P")


@functools.cache
def font_paths() -> tuple[Path, ...]:
    paths = []
    for package, file in FONT_FILES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"font package '{package}' is missing: pip install -e '.[train]'")
        paths.append(Path(spec.origin).parent / file)
    return tuple(paths)


@functools.cache
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_paths()[index]), size)


def _all_patterns() -> list[str]:
    return sorted({pattern for _, _, patterns in FORMATS for pattern in patterns})


PATTERNS = _all_patterns()


def random_registration(rng: np.random.Generator) -> tuple[str, list[str]]:
    """A registration and its display groups (how the plate spaces it)."""
    if rng.random() < 0.2:  # vanity, specialty or a layout no table knows
        length = int(rng.integers(2, 9))
        text = "".join(rng.choice(list(PLATE_ALPHABET), length))
    else:
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        text = "".join(rng.choice(list(LETTERS if kind == "L" else DIGITS)) for kind in pattern)
    # Split where letters meet digits (how most plates space their groups), sometimes nowhere.
    groups, current = [], text[0]
    for previous, ch in itertools.pairwise(text):
        if ch.isalpha() != previous.isalpha() and rng.random() < 0.7:
            groups.append(current)
            current = ch
        else:
            current += ch
    groups.append(current)
    return text, groups


@dataclass(frozen=True, slots=True)
class Style:
    background: tuple[int, int, int]
    ink: tuple[int, int, int]
    busy: bool  # a picture behind the characters


LIGHT = ((245, 245, 245), (235, 225, 120), (250, 250, 230), (220, 235, 250), (230, 240, 225), (200, 200, 200))
DARK = ((30, 30, 30), (20, 40, 110), (20, 90, 40), (110, 20, 30), (60, 60, 70))
INKS_ON_LIGHT = ((10, 10, 10), (20, 30, 120), (140, 20, 20), (20, 80, 30), (50, 50, 60))
INKS_ON_DARK = ((245, 245, 245), (240, 220, 90), (230, 230, 200))


def _style(rng: np.random.Generator) -> Style:
    if rng.random() < 0.75:
        background, ink = LIGHT[rng.integers(len(LIGHT))], INKS_ON_LIGHT[rng.integers(len(INKS_ON_LIGHT))]
    else:
        background, ink = DARK[rng.integers(len(DARK))], INKS_ON_DARK[rng.integers(len(INKS_ON_DARK))]
    jitter = rng.integers(-20, 21, 3)
    background = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(background, jitter, strict=True))
    return Style(background, ink, bool(rng.random() < 0.35))


def _background(rng: np.random.Generator, size: tuple[int, int], style: Style) -> Image.Image:
    width, height = size
    base = np.empty((height, width, 3), np.float32)
    base[:] = style.background
    if rng.random() < 0.5:  # a gradient top to bottom
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        base += ramp * rng.uniform(-50, 50, 3).astype(np.float32)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if style.busy:  # hills, a sun, stripes: US plates draw pictures behind the serial
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 7))):
            colour = tuple(int(c) for c in rng.integers(90, 256, 3))
            x, y = int(rng.integers(-width // 2, width)), int(rng.integers(height // 3, height))
            r = int(rng.integers(height // 4, height))
            if rng.random() < 0.5:
                draw.ellipse((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
            else:
                draw.line((0, y, width, int(rng.integers(0, height))), fill=colour, width=int(rng.integers(2, 10)))
    return image


def _draw_text(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, font_index: int, ink) -> None:
    """`text` filling `box` (x1, y1, x2, y2) in height, centred, squeezed if wider."""
    x1, y1, x2, y2 = box
    height = max(4, y2 - y1)
    font = _font(font_index, height)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    scale = min(1.0, (x2 - x1) / max(1, right - left))
    if scale < 1.0:
        font = _font(font_index, max(4, int(height * scale)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = x1 + ((x2 - x1) - (right - left)) // 2 - left
    y = y1 + ((y2 - y1) - (bottom - top)) // 2 - top
    draw.text((x, y), text, font=font, fill=ink)


def _text_image(text: str, font_index: int, ink) -> Image.Image:
    """`text` on a transparent image, its glyphs about 100 px high."""
    font = _font(font_index, 100)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    image = Image.new("RGBA", (max(1, right - left + 8), max(1, bottom - top + 8)), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((4 - left, 4 - top), text, font=font, fill=(*ink, 255))
    return image


def _emblem(rng: np.random.Generator, height: int) -> Image.Image:
    """A coat of arms, a pair of registration seals or a badge: what EU plates set between groups."""
    h = int(height * rng.uniform(0.5, 0.9))
    w = int(h * rng.uniform(0.55, 0.9))
    image = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    colours = [(*(int(c) for c in rng.integers(0, 256, 3)), 255) for _ in range(3)]
    kind = int(rng.integers(3))
    if kind == 0:  # a shield, split in two colours, with a cross
        draw.polygon([(0, 0), (w - 1, 0), (w - 1, h * 0.6), (w / 2, h - 1), (0, h * 0.6)], fill=colours[0])
        draw.rectangle((w * 0.4, h * 0.1, w * 0.6, h * 0.7), fill=colours[1])
        draw.rectangle((w * 0.2, h * 0.25, w * 0.8, h * 0.38), fill=colours[1])
    elif kind == 1:  # two stacked round seals
        draw.ellipse((0, 0, w - 1, h / 2 - 1), fill=colours[0], outline=colours[2], width=2)
        draw.ellipse((0, h / 2, w - 1, h - 1), fill=colours[1], outline=colours[2], width=2)
    else:  # a badge with a ring
        draw.ellipse((0, h / 2 - w / 2, w - 1, h / 2 + w / 2), fill=colours[0], outline=colours[1], width=3)
    return image


def _glyph_text_image(text: str, glyph_font: str, ink, rng: np.random.Generator) -> Image.Image:
    """`text` set in real plate glyphs (`training.glyphs`) on a transparent image, 100 px
    high: each character a glyph of `glyph_font` cut from a real plate, its darkness the ink."""
    bank = load_bank()
    height = 100
    gap = int(height * rng.uniform(0.03, 0.1))
    pieces: list[np.ndarray | int] = []
    for character in text:
        if character in PLATE_ALPHABET:
            glyph = bank.glyph(rng, glyph_font, character)
            width = max(1, round(glyph.shape[1] * height / glyph.shape[0]))
            pieces.append(255 - cv2.resize(glyph, (width, height), interpolation=cv2.INTER_CUBIC))
        else:  # a separator: a space
            pieces.append(int(height * 0.3))
    width = sum(p if isinstance(p, int) else p.shape[1] for p in pieces) + gap * (len(pieces) + 1)
    alpha = np.zeros((height, max(1, width)), np.uint8)
    x = gap
    for piece in pieces:
        if isinstance(piece, int):
            x += piece + gap
            continue
        alpha[:, x : x + piece.shape[1]] = piece
        x += piece.shape[1] + gap
    image = np.zeros((height, alpha.shape[1], 4), np.uint8)
    image[..., :3] = ink
    image[..., 3] = alpha
    return Image.fromarray(image, "RGBA")


def _characters_image(
    rng: np.random.Generator,
    groups: list[str],
    font_index: int,
    ink,
    condense: float,
    emblem: bool,
    glyph_font: str | None = None,
) -> Image.Image:
    """The registration's groups on one transparent line, 100 px high, condensed; with
    `emblem`, a coat of arms or seals between the first group and the rest; with
    `glyph_font`, in real plate glyphs instead of the font."""
    separator = str(rng.choice(["  ", " ", "-", "·", " "]))

    def text_image(text: str) -> Image.Image:
        if glyph_font is None:
            return _text_image(text, font_index, ink)
        return _glyph_text_image(text, glyph_font, ink, rng)

    if not emblem or len(groups) < 2:
        line = text_image(separator.join(groups))
    else:
        head, tail = text_image(groups[0]), text_image(" ".join(groups[1:]))
        badge = _emblem(rng, head.height)
        gap = int(head.height * 0.08)
        line = Image.new("RGBA", (head.width + badge.width + tail.width + 2 * gap, head.height), (0, 0, 0, 0))
        line.alpha_composite(head, (0, 0))
        line.alpha_composite(badge, (head.width + gap, (head.height - badge.height) // 2))
        line.alpha_composite(tail, (head.width + badge.width + 2 * gap, max(0, (head.height - tail.height) // 2)))
    return line.resize((max(1, int(line.width * condense)), line.height), Image.Resampling.LANCZOS)


def _eu_band(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> int:
    """The EU band on the plate's left: blue, a ring of twelve stars, the country's letters.
    Returns its width."""
    band = int(width * rng.uniform(0.07, 0.11))
    blue = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip((10, 50, 160), rng.integers(-20, 21, 3), strict=True))
    draw.rectangle((0, 0, band, height), fill=blue)
    code = str(rng.choice(EU_BAND_CODES))
    _draw_text(draw, (3, int(height * 0.58), band - 3, int(height * 0.92)), code, int(rng.integers(3)), (255, 255, 255))
    radius, star = band * 0.3, max(1.0, band * 0.05)
    for k in range(12):
        angle = 2 * np.pi * k / 12
        cx, cy = band / 2 + radius * np.cos(angle), height * 0.3 + radius * np.sin(angle)
        draw.ellipse((cx - star, cy - star, cx + star, cy + star), fill=(240, 210, 30))
    return band


TWO_ROW_SHARE = 0.12  # of plates with at least 4 characters: what PlateNet was trained with


def render_plate(
    rng: np.random.Generator, two_row_share: float = TWO_ROW_SHARE, glyph_share: float = 0.0
) -> tuple[np.ndarray, str, int]:
    """One synthetic plate (BGR, with a little surround), its registration and its number of
    rows; with probability `glyph_share` its characters are real plate glyphs (`training.glyphs`)."""
    text, groups = random_registration(rng)
    style = _style(rng)
    font_index = int(rng.integers(len(font_paths())))
    glyph_font = None
    if glyph_share > 0 and rng.random() < glyph_share:  # no draw at 0: the stream stays as it was
        glyph_font = str(rng.choice(load_bank().font_names))
    two_lines = len(text) >= 4 and rng.random() < two_row_share
    eu_band = rng.random() < 0.3  # two-row European plates carry the band too
    aspect = rng.uniform(3.8, 4.8) if eu_band else rng.uniform(1.7, 2.3) if rng.random() < 0.6 else rng.uniform(2.3, 5)
    if two_lines:
        aspect = rng.uniform(1.2, 2.0)
    height = 100
    width = int(height * aspect)
    plate = _background(rng, (width, height), style)
    draw = ImageDraw.Draw(plate)
    left = 0
    if eu_band:
        left = _eu_band(rng, draw, width, height) + 4
    top_clutter = not eu_band and rng.random() < 0.7
    bottom_clutter = not eu_band and rng.random() < 0.5
    text_top = int(height * (rng.uniform(0.22, 0.3) if top_clutter else rng.uniform(0.06, 0.15)))
    text_bottom = int(height * (rng.uniform(0.72, 0.82) if bottom_clutter else rng.uniform(0.85, 0.94)))
    clutter_ink = tuple(int(c) for c in rng.integers(0, 256, 3)) if rng.random() < 0.5 else style.ink
    if top_clutter:
        words = " ".join(rng.choice(CLUTTER_WORDS, int(rng.integers(1, 3))))
        _draw_text(
            draw,
            (int(width * 0.15), 4, int(width * 0.85), text_top - 4),
            words,
            int(rng.integers(len(font_paths()))),
            clutter_ink,
        )
    if bottom_clutter:
        words = " ".join(rng.choice(CLUTTER_WORDS, int(rng.integers(1, 4))))
        _draw_text(
            draw,
            (int(width * 0.1), text_bottom + 3, int(width * 0.9), height - 4),
            words,
            int(rng.integers(len(font_paths()))),
            clutter_ink,
        )
    condense = rng.uniform(0.6, 1.05)
    margin = int(width * rng.uniform(0.03, 0.08))
    if two_lines:
        split = int(rng.integers(1, len(text)))
        split = min(max(split, len(text) // 2 - 1), len(text) // 2 + 1)
        rows = [text[:split], text[split:]]
        middle = (text_top + text_bottom) // 2
        boxes = [
            (left + margin, text_top, width - margin, middle - 2),
            (left + margin, middle + 2, width - margin, text_bottom),
        ]
        for row, (x1, y1, x2, y2) in zip(rows, boxes, strict=True):
            line = _characters_image(rng, [row], font_index, style.ink, condense, False, glyph_font)
            _paste_fitted(plate, line, (x1, y1, x2, y2))
    else:
        line = _characters_image(rng, groups, font_index, style.ink, condense, rng.random() < 0.25, glyph_font)
        _paste_fitted(plate, line, (left + margin, text_top, width - margin, text_bottom))
    for _ in range(int(rng.integers(0, 3))):  # registration stickers in a corner
        sx = int(rng.choice([rng.integers(2, max(3, width // 8)), rng.integers(width * 7 // 8, width - 10)]))
        sy = int(rng.choice([2, height - 22]))
        draw.rectangle(
            (sx, sy, sx + int(rng.integers(10, 25)), sy + 18), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    if rng.random() < 0.5:  # bolts
        for bx in (width * 0.25, width * 0.75):
            by = height * rng.choice([0.1, 0.9])
            draw.ellipse((bx - 4, by - 4, bx + 4, by + 4), fill=(120, 120, 120))
    if rng.random() < 0.6:  # a frame or the plate's embossed rim
        draw.rectangle(
            (1, 1, width - 2, height - 2),
            outline=style.ink if rng.random() < 0.5 else (40, 40, 40),
            width=int(rng.integers(2, 7)),
        )
    return cv2.cvtColor(np.asarray(plate), cv2.COLOR_RGB2BGR), text, 2 if two_lines else 1


def _paste_fitted(plate: Image.Image, line: Image.Image, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    scale = min((y2 - y1) / line.height, (x2 - x1) / line.width)
    resized = line.resize((max(1, int(line.width * scale)), max(1, int(line.height * scale))), Image.Resampling.LANCZOS)
    x = x1 + ((x2 - x1) - resized.width) // 2
    y = y1 + ((y2 - y1) - resized.height) // 2
    plate.alpha_composite(resized, (x, y)) if plate.mode == "RGBA" else plate.paste(resized, (x, y), resized)
