"""Property tests (issue 6, item 4): the config loader and the plate text functions on any input.

The config loader is given random YAML-able data, shaped like a deployment config (real
section and key names, real vocabulary) or not at all, and random text and bytes: it
returns `Settings` or raises `ConfigError` whose message is one line, and nothing else.
The plate functions are given arbitrary text and candidate lists: they never raise, and
what they return is made of the plate alphabet.

Examples per run: EXAMPLES (8 properties), a few seconds.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from anpr.config.deployment import MAX_RETENTION_DAYS
from anpr.config.settings import Settings, load_settings
from anpr.errors import ConfigError
from anpr.formats import COUNTRIES_BY_PATTERN, TO_DIGIT, TO_LETTER, best_format
from anpr.policy.rules import CONTROLLER_TYPES, PURPOSES
from anpr.reading.plates import PLATE_ALPHABET, TOP_CANDIDATES, choose_plate, normalise, same_plate

CONFIG_EXAMPLES = 200  # per config property (4)
PLATE_EXAMPLES = 250  # per plate property (4)
EXAMPLES = 4 * CONFIG_EXAMPLES + 4 * PLATE_EXAMPLES  # 1800 per run

# --- the config loader ---------------------------------------------------------------

VOCABULARY = sorted(
    {
        *PURPOSES,
        *CONTROLLER_TYPES,
        "database",
        "jsonl_export",
        "webhook",
        "mqtt",
        "store",
        "ppocr",
        "easyocr",
        "auto",
        "torch",
        "onnx",
        "cpu",
        "cuda",
        "cuda:0",
        "FR",
        "cam-1",
        "reads.sqlite",
        "https://h.example/in",
        "http://127.0.0.1/in",
        "file:///etc/passwd",
        "127.0.0.1",
    }
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(VOCABULARY)
    | st.sampled_from([0, 1, -1, 8, 32, 640, 500, 0.25, 2.0, 1e308, 10**9])
)
keys = st.text(max_size=8) | st.sampled_from(VOCABULARY) | st.integers(-2, 2) | st.none() | st.booleans()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=10
)


def section(*names: str) -> st.SearchStrategy:
    """A mapping of mostly real key names (some unknown) to random values, or any value at all."""
    return st.dictionaries(st.sampled_from(names) | st.text(max_size=6), values, max_size=len(names) + 1) | values


camera = section("id", "source", "location", "purposes") | st.fixed_dictionaries(
    {"id": st.sampled_from(["cam-1", "cam-2", ""]), "purposes": st.lists(st.sampled_from(sorted(PURPOSES)), max_size=2)}
)
purpose = section(
    "legal_basis", "safeguards", "retention_days", "sinks", "hotlist", "compliant_plates"
) | st.fixed_dictionaries(
    {
        "sinks": st.just(["store"]),
        "retention_days": scalars,
        "safeguards": section("human_review", "signage", "designated_agents", "dpia_reference"),
    }
)
config_data = (
    st.fixed_dictionaries(
        {},
        optional={
            "pipeline": section(
                "batch", "ocr", "queue", "min_confidence", "stride", "motion_threshold", "settle_reads"
            ),
            "detector": section("backend", "confidence", "input_size", "device"),
            "stream": section("stall_seconds", "reconnect_first_delay", "reconnect_max_delay"),
            "store": section("url", "spool_dir", "spool_max_mb"),
            "name": values,
            "description": values,
            "controller": section("type", "name", "jurisdiction"),
            "cameras": st.lists(camera, max_size=3) | values,
            "purposes": st.dictionaries(st.sampled_from(sorted(PURPOSES)) | st.text(max_size=6), purpose, max_size=3)
            | values,
            "sinks": st.dictionaries(
                st.sampled_from(["store", "export"]) | st.text(max_size=6),
                section("type", "path", "url", "allow_http_hosts", "auth_env", "queue_dir", "queue_max_mb", "ca_file"),
                max_size=2,
            )
            | values,
        },
    )
    | values
)


@pytest.fixture(scope="module")
def config_path():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "config.yaml"


def _load(path: Path) -> Settings | None:
    """Settings, or None for a ConfigError whose message is one line naming the file; anything else fails."""
    try:
        loaded = load_settings(path)
    except ConfigError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and message.strip() == message, repr(message)
        assert str(path) in message and len(message) < 2000
        return None
    assert isinstance(loaded, Settings)
    return loaded


def _sane(loaded: Settings) -> None:
    """What any accepted config guarantees the pipeline."""
    pipeline, detector = loaded.pipeline.for_source(stills=False), loaded.detector  # `auto` resolved for video
    for number in (pipeline.batch, pipeline.queue, pipeline.stride, pipeline.settle_reads, detector.input_size):
        assert type(number) is int
    assert 1 <= pipeline.batch <= 256 and 1 <= pipeline.stride <= 100 and detector.input_size % 32 == 0
    assert 0 < detector.confidence <= 1 and 0 <= pipeline.min_confidence <= 1
    assert loaded.store.url and loaded.store.spool_dir and type(loaded.store.spool_max_mb) is int
    stream = loaded.stream
    assert 0 < stream.reconnect_first_delay <= stream.reconnect_max_delay and math.isfinite(stream.stall_seconds)
    for declared in (loaded.deployment.purposes if loaded.deployment else {}).values():
        days = declared.retention_days
        assert days is None or (type(days) is float and 0 < days <= MAX_RETENTION_DAYS and math.isfinite(days))


@settings(max_examples=CONFIG_EXAMPLES, deadline=None)
@given(data=config_data)
def test_config_loader_on_random_data(config_path, data):
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    loaded = _load(config_path)
    if loaded is not None:
        _sane(loaded)


@settings(max_examples=CONFIG_EXAMPLES, deadline=None)
@given(
    text=st.text(max_size=200)
    | st.lists(
        st.sampled_from(
            [
                "pipeline:",
                "  batch:",
                " 8",
                " true",
                " -1",
                "\n",
                "- ",
                "{",
                "}",
                "[",
                "]",
                ": ",
                "&a ",
                "*a",
                "<<: ",
                "!!int ",
                "!!timestamp ",
                "2021-02-30",
                "!!binary ",
                "? ",
                "'",
                '"',
                "\t",
                "#",
                "cameras:",
                "purposes:",
                "name: ",
                ",",
                "%",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_config_loader_on_random_text(config_path, text):
    config_path.write_text(text, encoding="utf-8")
    loaded = _load(config_path)
    if loaded is not None:
        _sane(loaded)


@settings(max_examples=CONFIG_EXAMPLES, deadline=None)
@given(blob=st.binary(max_size=300))
def test_config_loader_on_random_bytes(config_path, blob):
    config_path.write_bytes(blob)
    loaded = _load(config_path)
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        assert loaded is None  # not text: always a ConfigError
    if loaded is not None:
        _sane(loaded)


@settings(max_examples=CONFIG_EXAMPLES, deadline=None)
@given(batch=scalars, stride=scalars, device=scalars, url=scalars)
def test_command_line_overrides(batch, stride, device, url):
    try:
        loaded = load_settings(
            None,
            {"pipeline": {"batch": batch, "stride": stride}, "detector": {"device": device}, "store": {"url": url}},
        )
    except ConfigError as error:
        assert len(str(error).splitlines()) == 1 and str(error).startswith("command-line option: ")
        return
    _sane(loaded)


# --- plate text ----------------------------------------------------------------------

ALPHABET = frozenset(PLATE_ALPHABET)
plate_text = st.text(PLATE_ALPHABET, max_size=10)


@st.composite
def plate_like(draw) -> str:
    """A string in one of the known layouts, some positions swapped for a look-alike."""
    pattern = draw(st.sampled_from(sorted(COUNTRIES_BY_PATTERN)))
    chars = [draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ" if kind == "L" else "0123456789")) for kind in pattern]
    for i, ch in enumerate(chars):
        if draw(st.integers(0, 4)) == 0:
            chars[i] = TO_LETTER.get(ch) or TO_DIGIT.get(ch) or ch
    return "".join(chars)


@settings(max_examples=PLATE_EXAMPLES, deadline=None)
@given(a=st.text(), b=st.text())
def test_normalise(a, b):
    plate = normalise(a)
    assert set(plate) <= ALPHABET
    assert normalise(plate) == plate  # idempotent
    assert normalise(a + b) == plate + normalise(b)  # what separates or precedes a part never changes it
    if a.isascii():
        assert plate == "".join(ch for ch in a.upper() if ch.isalnum())
        assert normalise(a.lower()) == normalise(a.upper()) == plate


@settings(max_examples=PLATE_EXAMPLES, deadline=None)
@given(a=st.text(max_size=12) | plate_text, b=st.text(max_size=12) | plate_text, p=plate_text)
def test_same_plate(a, b, p):
    assert same_plate(a, a)
    assert same_plate(a, b) == same_plate(b, a)
    assert same_plate(a, normalise(a))
    assert same_plate(p, p.replace("O", "0")) and same_plate(p, p.replace("0", "O"))
    assert same_plate(p, "-".join(p).lower())  # separators and case never matter
    if not same_plate(a, b):
        assert normalise(a) != normalise(b)


probability = st.floats(0.0, 1.0) | st.sampled_from([0.0, 5e-324, 1.0])
candidate_text = st.text(max_size=10) | plate_text | plate_like()


@settings(max_examples=PLATE_EXAMPLES, deadline=None)
@given(candidates=st.lists(st.tuples(candidate_text, probability), max_size=6), top=st.integers(1, 6))
def test_choose_plate(candidates, top):
    chosen = choose_plate(candidates, top)
    assert set(chosen.plate) <= ALPHABET
    readable = [normalise(text) for text, _ in candidates if len(normalise(text)) >= 2]
    if not readable:
        assert (chosen.plate, chosen.confidence, chosen.candidates) == ("", 0.0, ())
        return
    assert 1 <= len(chosen.candidates) <= top and chosen.candidates[0] == (chosen.plate, chosen.confidence)
    shares = [share for _, share in chosen.candidates]
    assert all(0.0 <= s <= 1.0 for s in shares) and shares == sorted(shares, reverse=True)
    assert sum(shares) <= 1.0 + 1e-9
    assert len({text for text, _ in chosen.candidates}) == len(chosen.candidates)
    # The plate is a candidate as read, or fitted to a layout by look-alike swaps.
    fitted = {(best_format(text).text if best_format(text) else text) for text in readable}
    assert chosen.plate in fitted
    if chosen.format is not None:
        assert len(chosen.format) == len(chosen.plate) and chosen.country
        assert all((kind == "L") == ch.isalpha() for ch, kind in zip(chosen.plate, chosen.format, strict=True))
    assert top != TOP_CANDIDATES or choose_plate(candidates) == chosen


@settings(max_examples=PLATE_EXAMPLES, deadline=None)
@given(text=plate_like() | plate_text)
def test_best_format(text):
    match = best_format(text)
    if match is None:
        return
    assert len(match.text) == len(text) == len(match.pattern) and match.pattern in COUNTRIES_BY_PATTERN
    assert all((kind == "L") == ch.isalpha() for ch, kind in zip(match.text, match.pattern, strict=True))
    changed = [(a, b) for a, b in zip(text, match.text, strict=True) if a != b]
    assert match.swaps == len(changed) and all(TO_LETTER.get(a) == b or TO_DIGIT.get(a) == b for a, b in changed)
    again = best_format(match.text)
    assert again is not None and again.swaps == 0 and again.text == match.text
