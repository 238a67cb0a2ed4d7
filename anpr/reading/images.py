"""Still images read safely: their size from the header before decoding, decoded from bytes.

OpenCV is never given an image's path. Its Python binding crashes the process (SIGSEGV)
on a file name that is not valid UTF-8, which Linux allows; bytes read by Python have
no name. And OpenCV decodes whatever size a header declares, up to a gigapixel: a
389 KB PNG that declares 20000x20000 pixels takes 2.5 GB to decode. So the header is
read here first, and an image over `MAX_IMAGE_PIXELS` is refused without decoding.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

# 50 megapixels is 150 MB as BGR: above the largest frames of plate cameras (12 MP) and
# photos of 48-50 MP phones, and a twentieth of OpenCV's own limit, which lets a small
# file with a lying header take gigabytes.
MAX_IMAGE_PIXELS = 50_000_000
FORMATS = "JPEG, PNG, BMP, TIFF or WebP"  # those of source.IMAGE_SUFFIXES, whose headers image_size reads
_JPEG_MAX_SEGMENTS = 1000  # a real file has a few dozen before its frame header; a crafted one, millions
_TIFF_MAX_TAGS = 4096


def image_size(file: BinaryIO) -> tuple[int, int] | None:
    """(width, height) as the header of the image in `file` declares them (read from its
    start), or None when it is not one of the formats read here or its header is cut."""
    head = file.read(32)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return _pair(struct.unpack(">II", head[16:24]))
        if head.startswith(b"\xff\xd8"):
            file.seek(2)
            return _jpeg_size(file)
        if head.startswith(b"BM"):
            if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                return _pair(struct.unpack("<HH", head[18:22]))
            width, height = struct.unpack("<ii", head[18:26])
            return _pair((width, abs(height)))  # a negative height is a top-down bitmap
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            return _tiff_size(file, head)
    except (struct.error, OSError, ValueError, IndexError):
        return None
    return None


def _pair(size: tuple[int, ...]) -> tuple[int, int] | None:
    width, height = size
    return (width, height) if width > 0 and height > 0 else None


def _jpeg_size(file: BinaryIO) -> tuple[int, int] | None:
    """The size in the first frame header (SOFn), walking the segments before it."""
    for _ in range(_JPEG_MAX_SEGMENTS):
        if file.read(1) != b"\xff":
            return None
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker or marker in (b"\xd9", b"\xda"):  # end of image, or scan data before any frame header
            return None
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
            continue
        (length,) = struct.unpack(">H", file.read(2))
        if length < 2:
            return None
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # SOF0-15 but DHT, JPG, DAC
            height, width = struct.unpack(">xHH", file.read(5))
            return _pair((width, height))
        file.seek(length - 2, io.SEEK_CUR)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sizes minus one
        return _pair((int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1))
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(head[21:25], "little")
        return _pair(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes and a 2-bit scale
        width, height = struct.unpack("<HH", head[26:30])
        return _pair((width & 0x3FFF, height & 0x3FFF))
    return None


def _tiff_size(file: BinaryIO, head: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first image (the one OpenCV decodes); BigTIFF too."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\0", b"\0+")
    count_format, entry_size, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    (offset,) = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])
    file.seek(offset)
    count_size = struct.calcsize(count_format)
    (count,) = struct.unpack(order + count_format, file.read(count_size))
    entries = file.read(min(count, _TIFF_MAX_TAGS) * entry_size)
    found: dict[int, int] = {}
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for start in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = struct.unpack(order + "HH", entries[start : start + 4])
        if tag in (256, 257) and kind in value_formats:
            value_format = order + value_formats[kind]
            at = start + value_at
            (found[tag],) = struct.unpack(value_format, entries[at : at + struct.calcsize(value_format)])
    return _pair((found.get(256, 0), found.get(257, 0)))


def image_problem(path: Path) -> str | None:
    """Why the image at `path` will not be decoded (unreadable, no header, too large), or None.

    Reads only the header: meant for checking a whole folder before a run starts."""
    try:
        with path.open("rb") as file:
            return _size_problem(file)
    except OSError as exc:
        return f"not a readable image ({exc.strerror or exc})"


def _size_problem(file: BinaryIO) -> str | None:
    size = image_size(file)
    if size is None:
        file.seek(0, io.SEEK_END)
        return "not a readable image (" + ("empty file" if file.tell() == 0 else f"no {FORMATS} header") + ")"
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        return (
            f"image too large ({width}x{height} pixels, {width * height / 1e6:.0f} megapixels; "
            f"at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are read)"
        )
    return None


def read_image(path: Path) -> np.ndarray | str:
    """The image at `path` as (H, W, 3) uint8 BGR, or why it cannot be.

    The header is checked again on the bytes decoded: the file may have changed since a
    check by `image_problem`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"not a readable image ({exc.strerror or exc})"
    problem = _size_problem(io.BytesIO(data))
    if problem:
        return problem
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    return "not a readable image (it cannot be decoded)" if image is None else image
