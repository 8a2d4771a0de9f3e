"""Image headers read without decoding: format, width, height, and whether the file is complete.

An image is checked before OpenCV decodes it, so a decompression bomb (a small
file whose header claims gigapixels) is refused without allocating anything,
and a truncated upload (a JPEG without its end marker, a PNG without IEND) is
refused instead of decoding into a half-grey picture. PNG, JPEG, BMP and WebP
are parsed here with their end; TIFF, GIF and PNM for their size only; other
formats are left to OpenCV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); not DHT (C4), JPG (C8), DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length


class HeaderError(ValueError):
    """The file claims a known format but its header or structure is broken; the message says how."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header says; `complete` is False for a file cut off before its end marker."""

    format: str  # png | jpeg | bmp | webp | tiff | gif | pnm
    width: int
    height: int
    complete: bool = True

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader | None:
    """Parse the header of PNG, JPEG, BMP, WebP, TIFF, GIF or PNM `data`; None for any other format.

    Raises HeaderError when the magic bytes name one of these formats but the rest does not follow it.
    """
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith(JPEG_SOI):
        return _jpeg(data)
    if data.startswith(b"BM") and len(data) >= 26:
        return _bmp(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return ImageHeader("gif", width, height)
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return _pnm(data)
    return None


def _png(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise HeaderError("PNG signature without an IHDR header (file cut off or not a PNG)")
    width, height = struct.unpack(">II", data[16:24])
    pos, complete = 8, False
    while pos + 8 <= len(data):  # walk the chunks: length, type, data, crc
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 2**31 - 1:
            raise HeaderError(f"PNG chunk {kind!r} at byte {pos} has an invalid length {length}")
        pos += 12 + length
        if kind == b"IEND":
            complete = pos <= len(data)
            break
    return ImageHeader("png", width, height, complete)


def _jpeg(data: bytes) -> ImageHeader:
    """Walk the marker segments; the size comes from the first start-of-frame, completeness from EOI."""
    pos, size = 2, None
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            if size is None:
                raise HeaderError(f"JPEG marker expected at byte {pos} before any frame header")
            # inside entropy-coded data: the next marker is 0xFF not followed by 0x00 or RSTn
            pos = _next_jpeg_marker(data, pos)
            if pos < 0:
                break
            continue
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if size is None:
                raise HeaderError("JPEG ends before any frame header")
            return ImageHeader("jpeg", size[1], size[0], True)
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise HeaderError(f"JPEG segment 0x{marker:02X} at byte {pos} has an invalid length {length}")
        if marker in _JPEG_SOF and size is None:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            size = (height, width)
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            nxt = _next_jpeg_marker(data, pos)
            if nxt < 0:
                break
            pos = nxt
    if size is None:
        raise HeaderError("JPEG without a frame header (file cut off or not a JPEG)")
    return ImageHeader("jpeg", size[1], size[0], False)


def _next_jpeg_marker(data: bytes, pos: int) -> int:
    """Position of the next real marker (0xFF followed by neither 0x00 nor RSTn) at or after `pos`, or -1."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def _bmp(data: bytes) -> ImageHeader:
    (offset,) = struct.unpack("<I", data[10:14])
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
        bits_at = 24
    elif 40 <= header_size <= 124 and len(data) >= 30:
        width, height = struct.unpack("<ii", data[18:26])
        bits_at = 28
    else:
        raise HeaderError(f"BMP with an unknown header size {header_size}")
    width, height = abs(width), abs(height)  # a negative height means top-down rows
    (bits,) = struct.unpack("<H", data[bits_at : bits_at + 2])
    compression = struct.unpack("<I", data[30:34])[0] if header_size >= 40 and len(data) >= 34 else 0
    complete = True
    if compression == 0 and bits in (1, 4, 8, 16, 24, 32):  # uncompressed: the pixel rows have a known size
        row = (width * bits + 31) // 32 * 4
        complete = offset + row * height <= len(data)
    return ImageHeader("bmp", width, height, complete)


def _webp(data: bytes) -> ImageHeader:
    (riff_size,) = struct.unpack("<I", data[4:8])
    complete = riff_size + 8 <= len(data)
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
    elif kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    else:
        raise HeaderError("WebP without a readable VP8/VP8L/VP8X header (file cut off or not a WebP)")
    return ImageHeader("webp", width, height, complete)


def _tiff(data: bytes) -> ImageHeader:
    """Width and height of the first image (IFD) of a TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        size: dict[int, int] = {}
        for i in range(count):
            entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
                size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    except struct.error:
        raise HeaderError("TIFF whose first image directory is cut off") from None
    if len(size) != 2:
        raise HeaderError("TIFF without an image width and length")
    return ImageHeader("tiff", size[256], size[257])


def _pnm(data: bytes) -> ImageHeader:
    """Width and height of a PBM/PGM/PPM (text header, '#' comments allowed)."""
    tokens: list[bytes] = []
    for line in data[2:512].split(b"\n"):
        tokens += line.split(b"#")[0].split()
        if len(tokens) >= 2:
            break
    try:
        width, height = int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        raise HeaderError("PNM without a readable width and height") from None
    return ImageHeader("pnm", width, height)
