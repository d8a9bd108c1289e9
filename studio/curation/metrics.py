"""Technical image-quality metrics: small functions on numpy arrays (numpy and PIL only).

Two views of an image feed them (`prepare`):
  * `gray` / `rgb`: float32 in 0..1 at the canonical scale (long side at most WORK_SIDE px, never enlarged), for
    the metrics that depend on scale (blur, exposure, contrast);
  * `levels`: luma in 0..255 at the file's own resolution, a centre crop of at most NATIVE_CROP px, for the
    metrics that must see the pixel grid (JPEG blocks, banding, noise), which downscaling would hide.

Each metric documents its scale. Where it is not already one, `studio.curation.policy` maps it to a goodness
in 0..1 for the combined score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

WORK_SIDE = 512         # canonical scale: long side in px for scale-dependent metrics
NATIVE_CROP = 512       # native-resolution centre crop for grid-level metrics
MIN_SIDE = 32           # smaller images are not scored ("too small")
MAX_PIXELS = 120_000_000  # larger images are refused before decoding (decompression bombs)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601
BLUR_WINDOW = 9         # box length of the re-blur in `directional_blur` (Crete-Roffet et al. 2007)
DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and both diagonals (dy, dx)


class ImageProblem(ValueError):
    """An image that cannot be scored (too small, too large, unreadable pixel format)."""


@dataclass
class Prepared:
    """One image ready for the metrics."""

    rgb: np.ndarray      # float32 (h, w, 3) in 0..1, canonical scale
    gray: np.ndarray     # float32 (h, w) luma in 0..1, canonical scale
    levels: np.ndarray   # float32 (h, w) luma in 0..255, native resolution, centre crop
    size: tuple[int, int]  # the file's (width, height)
    mode: str            # the file's PIL mode ("RGB", "RGBA", "L", "I;16", ...)


# ------------------------------------------------------------------ loading
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _top(img: Image.Image) -> float:
    """The white level of a greyscale image of more than 8 bits: 65535 for 16-bit files, else 255 unless the
    values go beyond it."""
    if img.mode.startswith("I;16"):
        return 65535.0
    high = img.getextrema()[1]
    return 65535.0 if high > 255 else 255.0


def to_rgb_array(img: Image.Image, top: float | None = None) -> np.ndarray:
    """float32 (h, w, 3) in 0..1 from any PIL mode: 16-bit and 32-bit greyscale are scaled by their white level
    `top` (not clipped at 255 as PIL's convert does), alpha is composited over mid grey."""
    mode = img.mode
    if mode in WIDE_MODES:
        a = np.clip(np.asarray(img, dtype=np.float32) / (top or _top(img)), 0, 1)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3:4]
        return rgba[..., :3] * alpha + 0.5 * (1 - alpha)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255


def _resizable(img: Image.Image) -> Image.Image:
    """A mode PIL resizes by averaging (palette and bilevel images are expanded first)."""
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode not in WIDE_MODES + ("L", "LA", "RGB", "RGBA"):
        return img.convert("RGB")
    return img


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float (h, w, 3) array, as a weighted sum (no BLAS call, no threads)."""
    return rgb[..., 0] * LUMA[0] + rgb[..., 1] * LUMA[1] + rgb[..., 2] * LUMA[2]


def prepare(img: Image.Image) -> Prepared:
    """The two views of an image (see the module doc). ImageProblem for tiny or enormous images. A large image
    is reduced by PIL before any float copy, so an 8000x8000 file costs its decoded size, not 12 bytes a pixel."""
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise ImageProblem(f"too small to score: {w}x{h} (at least {MIN_SIDE}x{MIN_SIDE})")
    if w * h > MAX_PIXELS:
        raise ImageProblem(f"too large to score: {w}x{h} (at most {MAX_PIXELS // 1_000_000} megapixels)")
    mode = img.mode
    img = _resizable(img)
    top = _top(img) if img.mode in WIDE_MODES else None
    cw, ch = min(w, NATIVE_CROP), min(h, NATIVE_CROP)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    levels = luma(to_rgb_array(img.crop((x0, y0, x0 + cw, y0 + ch)), top)) * 255
    scale = WORK_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX, reducing_gap=3.0)
    rgb = to_rgb_array(img, top)
    return Prepared(rgb, luma(rgb), levels.astype(np.float32), (w, h), mode)


# ------------------------------------------------------------------ blur
def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of `gray` (0..1 intensities at the canonical scale). Raw scale:
    about 1e-2 for sharp photos, below 1e-4 for strongly blurred ones; grows with contrast and noise (the plain
    baseline the benchmark compares with)."""
    g = gray
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def directional_blur(gray: np.ndarray, window: int = BLUR_WINDOW) -> tuple[float, ...]:
    """The "blur effect" (Crete-Roffet et al., 2007) along each of DIRECTIONS, each in 0..1 (1 = blurry).

    Re-blur the image with a box of `window` px along the direction and measure how much of the neighbour
    differences the re-blur removes: a sharp image loses much, a blurred one little. It is contrast-invariant,
    and motion blur shows as one direction much blurrier than the others."""
    g = np.asarray(gray, np.float32)
    half = window // 2
    m = half + 1
    if min(g.shape) <= 4 * m:
        return tuple(0.0 for _ in DIRECTIONS)
    p = np.pad(g, m, mode="edge")
    h, w = g.shape
    out = []
    for dy, dx in DIRECTIONS:
        box = sum(p[m + k * dy:m + k * dy + h, m + k * dx:m + k * dx + w] for k in range(-half, half + 1)) / window
        core = (slice(2 * m, h - 2 * m), slice(2 * m, w - 2 * m))
        near = (slice(2 * m - dy, h - 2 * m - dy), slice(2 * m - dx, w - 2 * m - dx))
        d_sharp = np.abs(g[core] - g[near])
        d_blur = np.abs(box[core] - box[near])
        total = float(d_sharp.sum())
        kept = float(np.maximum(0, d_sharp - d_blur).sum())
        out.append((total - kept) / total if total > 1e-6 else 1.0)
    return tuple(out)


def sharpness(gray: np.ndarray) -> float:
    """1 - the blurriest direction's blur effect, in 0..1 (1 = sharp). Calibrated on blurred copies of
    scikit-image's sample photos at 512 px (bench/curation.py): originals 0.65..0.83 (the `cell` micrograph,
    blurry as captured: 0.44), Gaussian sigma 2 0.27..0.51, sigma 5 0.10..0.40, 15 px motion blur 0.21..0.56.
    The default rule floor (studio.curation.policy) is 0.45, below every sharp original; milder blur is left to
    the combined score."""
    return 1.0 - max(directional_blur(gray))


def motion_blur(gray: np.ndarray) -> float:
    """Directional blur: the blurriest direction's blur effect minus the sharpest one's, in 0..1 (0 = the same
    in every direction; 15 px motion blur of a photo: 0.2..0.4; photos: 0.01..0.1)."""
    blur = directional_blur(gray)
    return max(blur) - min(blur)


# ------------------------------------------------------------------ compression and quantisation
def _phase_profile(levels: np.ndarray, axis: int) -> np.ndarray:
    """Median over the 8x8 grid's columns (rows) of each phase of the mean absolute neighbour difference."""
    d = np.abs(np.diff(levels, axis=axis)).mean(axis=1 - axis)
    n = d.size // 8 * 8
    if n < 16:
        return np.ones(8)
    return np.median(d[:n].reshape(-1, 8), axis=0)


def block_ratio(levels: np.ndarray) -> float:
    """JPEG blockiness, raw: how much larger the neighbour differences are across the strongest 8-px grid line
    phase than within blocks (mean of horizontal and vertical), 1.0 = no grid. Levels in 0..255 at native
    resolution. The phase with the largest difference is taken, so a crop of a JPEG still shows its grid; it is
    compared with the median phase and with the phases 2, 4 and 6 px away, so pixel-doubled images read 1.0."""
    ratios = []
    for axis in (0, 1):
        prof = _phase_profile(levels, axis)
        p = int(np.argmax(prof))
        # a period-2 or period-4 pattern (an image enlarged 2x or 4x by pixel repetition) is no 8-px grid
        base = max(float(np.median(np.delete(prof, p))), *(prof[(p + k) % 8] for k in (2, 4, 6)))
        ratios.append((prof[p] + 0.5) / (base + 0.5))
    return float(np.mean(ratios))


def blockiness(levels: np.ndarray) -> float:
    """JPEG blockiness in 0..1: `block_ratio` mapped linearly from 1.1 (none) to 2.1 (1). Photos and PNGs:
    0..0.05; JPEG quality 5: 0.5..1."""
    return float(np.clip((block_ratio(levels) - 1.1) / 1.0, 0, 1))


def banding(levels: np.ndarray) -> float:
    """Colour banding in 0..1: the density of isolated small steps (2..24 levels) between flat runs (<0.5 level
    for 2 px on both sides), as a smooth gradient shows when quantised too coarsely; 0.02 steps per pixel and
    axis reads as 1. A smooth 8-bit gradient: 0; the same gradient in 16 levels: 1; photos: under 0.1."""
    densities = []
    for axis in (0, 1):
        a = np.abs(np.diff(levels, axis=axis))
        if axis == 0:
            a = a.T
        if a.shape[1] < 8:
            continue
        flat = a < 0.5
        step = (a >= 1.5) & (a <= 24)
        isolated = step[:, 2:-2] & flat[:, :-4] & flat[:, 1:-3] & flat[:, 3:-1] & flat[:, 4:]
        densities.append(isolated.mean())
    return float(np.clip(max(densities, default=0.0) / 0.02, 0, 1))


# ------------------------------------------------------------------ exposure, noise, contrast
def clipping(rgb: np.ndarray) -> float:
    """Share of pixels clipped to white (every channel >= 250/255) or to black (every channel <= 5/255), 0..1."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi = np.minimum(np.minimum(r, g), b) >= 250 / 255
    lo = np.maximum(np.maximum(r, g), b) <= 5 / 255
    return float(np.count_nonzero(hi | lo) / hi.size)


def noise_sigma(levels: np.ndarray, block: int = 4) -> float:
    """Noise estimate in levels (0..255), raw: the RMS of the diagonal Haar detail (which carries little image
    structure) in tiles of 2*block px, taking the 10th-percentile tile so that texture and edges do not count;
    tiles clipped flat to black or white are skipped. Clean photos: 0..2 (dense texture such as grass: up to
    7.5); added Gaussian noise of sigma 10: 4..9.5, of sigma 25: 9.4..17 (clipping at 0 and 255 hides part)."""
    h, w = (levels.shape[0] // 2) * 2, (levels.shape[1] // 2) * 2
    a = levels[:h, :w]
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    bh, bw = hh.shape[0] // block, hh.shape[1] // block
    if bh == 0 or bw == 0:
        return float(np.sqrt((hh ** 2).mean())) if hh.size else 0.0
    tiles = hh[:bh * block, :bw * block].reshape(bh, block, bw, block).swapaxes(1, 2).reshape(bh * bw, -1)
    src = a[:bh * block * 2, :bw * block * 2].reshape(bh, 2 * block, bw, 2 * block).swapaxes(1, 2)
    src = src.reshape(bh * bw, -1)
    clipped = (src.max(axis=1) <= 2) | (src.min(axis=1) >= 253)
    rms = np.sqrt((tiles ** 2).mean(axis=1))[~clipped]
    return float(np.percentile(rms, 10)) if rms.size else 0.0


def contrast(rgb: np.ndarray) -> float:
    """RMS contrast, raw 0..0.5: the root of the mean variance of the colour channels (0..1), so a red shape on
    a blue ground of the same luma still has contrast. Photos: 0.1..0.3; a haze or a near-flat image: < 0.05."""
    a = np.asarray(rgb, np.float32)
    channels = [a[..., c] for c in range(a.shape[2])] if a.ndim == 3 else [a]
    return float(np.sqrt(np.mean([c.var() for c in channels])))


def technical_metrics(prep: Prepared) -> dict[str, float]:
    """Every technical metric of one prepared image (BRISQUE and the semantic metrics live elsewhere)."""
    blur = directional_blur(prep.gray)
    return {
        "sharpness": 1.0 - max(blur),
        "motion_blur": max(blur) - min(blur),
        "laplacian_var": laplacian_variance(prep.gray),
        "blockiness": blockiness(prep.levels),
        "banding": banding(prep.levels),
        "clipping": clipping(prep.rgb),
        "noise": noise_sigma(prep.levels),
        "contrast": contrast(prep.rgb),
    }
