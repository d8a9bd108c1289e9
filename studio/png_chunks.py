"""A PNG's size and text chunks (tEXt, zTXt, iTXt), read without decoding its pixels.

Walks the chunk headers and seeks past the image data: the text before the first IDAT (where every known
generator writes it) costs a few small reads, a tail read checks that the file ends with IEND, and the chunks
after the image data are walked only when the text before it holds nothing (or the file does not end with
IEND: bytes after it are allowed, a cut is not). Structural damage (bad signature, a chunk running past the
end, a text or header chunk whose CRC does not match, no IEND) raises CorruptImageError; damage inside the
compressed pixel data shows only when the image is decoded.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

from studio.errors import CorruptImageError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
MAX_CHUNK_BYTES = 2**31 - 1  # the PNG limit on a chunk's length
MAX_TEXT_BYTES = 16 * 2**20  # a compressed text chunk may inflate to this much (guards against zip bombs)
STEALTH_COLOR_TYPES = (2, 6)  # RGB, RGBA: the pixel formats that stealth infotext is written into


@dataclass(frozen=True)
class PngText:
    """What a PNG says about itself without its pixels."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    text: dict[str, str] = field(default_factory=dict)

    @property
    def may_hide_bits(self) -> bool:
        """Whether stealth infotext (studio.stealth_info) could be written in these pixels: 8-bit RGB(A)."""
        return self.bit_depth == 8 and self.color_type in STEALTH_COLOR_TYPES


def read_png_text(path, all_chunks: bool = False) -> PngText:
    """The size and text chunks of the PNG at `path` (later chunks win over earlier ones with the same keyword);
    `all_chunks` walks past the image data even when text was found before it. CorruptImageError on damage."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if fh.read(8) != SIGNATURE:
            raise CorruptImageError(f"{path}: not a PNG file (bad signature)")
        if size < len(SIGNATURE) + 25 + len(IEND_CHUNK):
            raise CorruptImageError(f"{path}: truncated PNG ({size} bytes)")
        fh.seek(size - len(IEND_CHUNK))
        ends_with_iend = fh.read(len(IEND_CHUNK)) == IEND_CHUNK
        fh.seek(len(SIGNATURE))
        return _walk(fh, path, size, all_chunks or not ends_with_iend)  # else: walk to IEND, or find the cut


def _walk(fh, path, size: int, all_chunks: bool) -> PngText:
    header, text, position, seen_data = None, {}, len(SIGNATURE), False
    while True:
        length, kind = struct.unpack(">I4s", _read(fh, 8, path))
        end = position + 12 + length
        if length > MAX_CHUNK_BYTES or end > size:
            raise CorruptImageError(f"{path}: truncated PNG (chunk {kind!r} runs past the end of the file)")
        if header is None and kind != b"IHDR":
            raise CorruptImageError(f"{path}: damaged PNG (the first chunk is {kind!r}, not IHDR)")
        if kind == b"IEND":
            break
        if kind == b"IDAT" and not seen_data:
            seen_data = True
            if text and not all_chunks:
                break
        if kind == b"IHDR" or kind in TEXT_CHUNKS:
            data = _read(fh, length, path)
            if zlib.crc32(kind + data) != struct.unpack(">I", _read(fh, 4, path))[0]:
                raise CorruptImageError(f"{path}: damaged PNG (CRC mismatch in its {kind.decode('latin-1')} chunk)")
            if kind == b"IHDR":
                header = _header(data, path)
            else:
                key, value = _text(kind, data, path)
                text[key] = value
        else:
            fh.seek(length + 4, os.SEEK_CUR)
        position = end
    return PngText(*header, text)


def _read(fh, n: int, path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CorruptImageError(f"{path}: truncated PNG")
    return data


def _header(data: bytes, path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from IHDR."""
    if len(data) != 13:
        raise CorruptImageError(f"{path}: damaged PNG (IHDR is {len(data)} bytes, not 13)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[:10])
    if not width or not height:
        raise CorruptImageError(f"{path}: damaged PNG (size {width}x{height})")
    return width, height, bit_depth, color_type


def _text(kind: bytes, data: bytes, path) -> tuple[str, str]:
    """(keyword, text) of one tEXt, zTXt or iTXt chunk, decoded as Pillow decodes them."""
    keyword, sep, rest = data.partition(b"\0")
    if not sep:
        raise CorruptImageError(f"{path}: damaged PNG (a {kind.decode()} chunk has no keyword)")
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        return key, _inflate(rest[1:], key, path).decode("latin-1")
    if len(rest) < 2:
        raise CorruptImageError(f"{path}: damaged PNG (iTXt chunk {key!r} is cut short)")
    compressed, body = rest[0], rest[2:]
    _language, _, body = body.partition(b"\0")
    _translated, _, body = body.partition(b"\0")
    raw = _inflate(body, key, path) if compressed else body
    return key, raw.decode("utf-8", errors="replace")


def _inflate(data: bytes, key: str, path) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise CorruptImageError(f"{path}: damaged PNG (text chunk {key!r} does not inflate: {exc})") from None
    if inflater.unconsumed_tail:
        raise CorruptImageError(f"{path}: text chunk {key!r} inflates past {MAX_TEXT_BYTES // 2**20} MiB")
    return out
