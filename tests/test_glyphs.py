"""Real plate glyphs for the synthetic plates (training/glyphs.py, training/data/glyphs.npz)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from anpr.reading.plates import PLATE_ALPHABET
from training.glyphs import BANK, GLYPH_HEIGHT, INK_SHARE, load_bank, normalise_glyph
from training.synth import render_plate


def test_the_committed_bank_is_the_one_its_provenance_names():
    provenance = json.loads(BANK.with_suffix(".json").read_text())
    assert provenance["sha256"] == hashlib.sha256(BANK.read_bytes()).hexdigest()
    assert provenance["repository"] == "openalpr/train-ocr" and len(provenance["commit"]) == 40
    bank = load_bank()
    assert sum(provenance["glyphs"].values()) == len(bank.images)
    assert set(bank.font_names) == set(provenance["glyphs"])
    assert set(bank.characters.tolist()) == set(PLATE_ALPHABET)  # every character has a glyph somewhere
    assert bank.images.shape[1:] == (GLYPH_HEIGHT, GLYPH_HEIGHT)
    dark = [(bank.images[i, :, : bank.widths[i]] < 128).mean() for i in range(0, len(bank.images), 97)]
    assert INK_SHARE[0] <= min(dark) and max(dark) <= INK_SHARE[1]


def test_a_glyph_comes_from_its_font_or_from_another_where_the_font_has_none():
    bank = load_bank()
    rng = np.random.default_rng(0)
    font = bank.font_names[0]
    missing = sorted(set(PLATE_ALPHABET) - set(bank.characters[bank.fonts == font].tolist()))
    glyph = bank.glyph(rng, font, "8")
    assert glyph.shape[0] == GLYPH_HEIGHT and glyph.shape[1] <= GLYPH_HEIGHT
    for character in missing[:3]:
        assert bank.glyph(rng, font, character).shape[0] == GLYPH_HEIGHT


def test_light_on_dark_glyphs_are_turned_round():
    light_on_dark = np.zeros((60, 30), np.uint8)
    light_on_dark[10:50, 10:20] = 255  # a bright stroke on a dark plate
    glyph = normalise_glyph(light_on_dark)
    assert glyph.shape == (GLYPH_HEIGHT, 24) and glyph[0, 0] > 200 and glyph[GLYPH_HEIGHT // 2, 12] < 50


def test_a_plate_in_real_glyphs_differs_from_the_same_plate_in_a_font():
    in_font, text, _ = render_plate(np.random.default_rng(4), 0.0, glyph_share=0.0)
    in_glyphs, same_text, _ = render_plate(np.random.default_rng(4), 0.0, glyph_share=1.0)
    assert text == same_text  # the registration is drawn before the glyphs are chosen
    assert in_glyphs.ndim == 3 and in_glyphs.shape[0] > 50
    assert in_font.shape != in_glyphs.shape or np.abs(in_font.astype(int) - in_glyphs).mean() > 1
