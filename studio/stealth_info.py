"""A1111's "stealth" infotext, hidden in the least significant bits of an image's pixels (the stealth-pnginfo
extension; NovelAI writes its JSON the same way).

The bits run down each column, left to right: a signature (`stealth_pnginfo` / `stealth_pngcomp` in the
alpha channel, one bit per pixel; `stealth_rgbinfo` / `stealth_rgbcomp` in R, G and B, three bits per pixel),
the payload's length in bits (32-bit big-endian), then the payload (gzip-compressed for the `comp` kinds).
Reading it decodes the pixels, so callers try it only when an image has no text metadata.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np

SIGNATURES = {  # signature -> (channels that carry the bits, compressed)
    "stealth_pnginfo": ("alpha", False), "stealth_pngcomp": ("alpha", True),
    "stealth_rgbinfo": ("rgb", False), "stealth_rgbcomp": ("rgb", True),
}
SIGNATURE_BITS = 8 * len("stealth_pnginfo")
LENGTH_BITS = 32


def read_stealth_text(image) -> str | None:
    """The text hidden in a PIL image's pixel bits, or None when it carries none."""
    if image.mode not in ("RGB", "RGBA"):
        return None
    pixels = np.asarray(image).transpose(1, 0, 2)  # column by column, top to bottom, as the writer goes
    streams = [("alpha", pixels[..., 3].reshape(-1))] if image.mode == "RGBA" else []
    streams.append(("rgb", pixels[..., :3].reshape(-1)))
    for channels, values in streams:
        bits = values & 1
        if bits.size < SIGNATURE_BITS + LENGTH_BITS:
            continue
        signature = np.packbits(bits[:SIGNATURE_BITS]).tobytes().decode("latin-1")
        if SIGNATURES.get(signature, (None,))[0] != channels:
            continue
        length = int.from_bytes(np.packbits(bits[SIGNATURE_BITS:SIGNATURE_BITS + LENGTH_BITS]).tobytes(), "big")
        start = SIGNATURE_BITS + LENGTH_BITS
        if length % 8 or start + length > bits.size:
            return None
        payload = np.packbits(bits[start:start + length]).tobytes()
        if SIGNATURES[signature][1]:
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error):
                return None
        return payload.decode("utf-8", errors="replace")
    return None
