"""Tiled inference for any image-to-image model (a callable on a BCHW 0..1 tensor that scales by a whole number).

    choose_tile_size(budget_bytes, bytes_per_pixel, width, height) -> tile side
    tiled_upscale(model, image, scale, tile_size, overlap, cancel, progress) -> Tiled
    measure_seam(model, image, scale, tile_size, overlap) -> Seam

Tiles are laid out in rows. Neighbouring tiles overlap by `overlap` input pixels; in each overlap the outer quarter
is context only (weight 0, where the model sees a cut edge) and the middle half is a linear ramp, so a model whose
receptive field is at most overlap/4 gives the untiled result, and any other model shows no hard seam. Outputs
and weights are accumulated on the CPU and divided at the end. A row that runs out of memory is dropped, the tile
side halved and the row run again; rows already done are kept.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

MIN_TILE = 16
WEIGHT_FLOOR = 1e-6  # every output pixel has some weight, even where ramps of different widths meet
TILE_MULTIPLE = 8


class TilingCancelled(Exception):
    """The cancel event was set: the run stopped between two tiles."""


@dataclass
class Tiled:
    image: object  # the BCHW output tensor (CPU, float32)
    tile_size: int  # the tile side that finished the run (after any halving)
    tiles: int  # tiles run, including those of rows run again
    halvings: int  # out-of-memory halvings


@dataclass
class Seam:
    max_abs: float  # largest |tiled - untiled| (0..1 scale)
    mean_abs: float
    boundary_energy: float  # mean |gradient| of the tiled output across its tile edges
    untiled_energy: float  # the same on the same lines of the untiled output
    elsewhere_energy: float  # mean |gradient| of the tiled output everywhere else

    @property
    def ratio(self) -> float:
        """Gradient across the tile edges, tiled / untiled: 1 when no seam shows; a seam moves it either way (a
        step the untiled output lacks, or edges flattened by the zero padding at a cut)."""
        return self.boundary_energy / self.untiled_energy if self.untiled_energy else 1.0


def choose_tile_size(budget_bytes: int, bytes_per_pixel: float, width: int, height: int,
                     minimum: int = MIN_TILE) -> int:
    """The largest tile side (a multiple of 8, at least `minimum`) whose pixels fit `budget_bytes` at
    `bytes_per_pixel`; the image's longer side when the whole image fits."""
    longest = max(width, height)
    if width * height * bytes_per_pixel <= budget_bytes:
        return longest
    side = int((budget_bytes / max(bytes_per_pixel, 1e-9)) ** 0.5) // TILE_MULTIPLE * TILE_MULTIPLE
    return max(minimum, min(longest, side))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                        and "out of memory" in str(exc).lower())


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles covering 0..length with at least `overlap` between neighbours, spread evenly
    (the first at 0, the last flush with the end)."""
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / max(1, tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool):
    """1-D weights of a tile `length` long: 1 inside; over `overlap` pixels at each side that meets another tile,
    0 for the outer quarter, then linear up to 1 across the middle half."""
    import torch

    w = torch.ones(length)
    if overlap <= 0:
        return w
    d = torch.arange(length, dtype=torch.float32) + 0.5  # distance of each pixel centre from the start
    rise = ((d - overlap / 4) / (overlap / 2)).clamp(0, 1)
    if ramp_start:
        w = torch.minimum(w, rise)
    if ramp_end:
        w = torch.minimum(w, rise.flip(0))
    return w.clamp_min(WEIGHT_FLOOR)


def _run_row(model, image, scale, y0, th, tile, overlap, cancel, on_tile):
    """One row of tiles: (output band, weight band) for input rows y0..y0+th."""
    import torch

    _, _, height, width = image.shape
    band = weights = None
    wy = ramp(th * scale, overlap * scale, y0 > 0, y0 + th < height)
    for x0 in tile_starts(width, tile, overlap):
        if cancel is not None and cancel.is_set():
            raise TilingCancelled()
        tw = min(tile, width)
        out = model(image[:, :, y0:y0 + th, x0:x0 + tw]).float().cpu()
        if out.shape[-2:] != (th * scale, tw * scale):
            raise ValueError(f"the model made {tuple(out.shape[-2:])} from a {th}x{tw} tile; expected x{scale}")
        if band is None:
            band = torch.zeros(out.shape[0], out.shape[1], th * scale, width * scale)
            weights = torch.zeros(1, 1, th * scale, width * scale)
        wx = ramp(tw * scale, overlap * scale, x0 > 0, x0 + tw < width)
        w = (wy[:, None] * wx[None, :])[None, None]
        band[..., x0 * scale:(x0 + tw) * scale] += out * w
        weights[..., x0 * scale:(x0 + tw) * scale] += w
        on_tile()
    return band, weights


def tiled_upscale(model: Callable, image, scale: int, tile_size: int, overlap: int = 16,
                  cancel: threading.Event | None = None, progress: Callable[[int, int], None] | None = None,
                  free_memory: Callable[[], None] | None = None, minimum: int = MIN_TILE) -> Tiled:
    """Run `model` over `image` (BCHW, CPU) in tiles of `tile_size` input pixels overlapping by `overlap`.
    On out-of-memory the current row is dropped, `free_memory()` called, the tile halved (not below `minimum`:
    then the error is raised) and the row run again. `cancel` is checked before every tile (TilingCancelled);
    `progress(done, total)` hears every tile (total is re-estimated after a halving)."""
    import torch

    _, _, height, width = image.shape
    tile = max(minimum, min(int(tile_size), max(height, width)))
    out = torch.zeros(0)
    weights = torch.zeros(1, 1, height * scale, width * scale)
    done = halvings = row = 0
    y_starts = tile_starts(height, tile, min(overlap, tile // 2))
    while row < len(y_starts):
        y0, ov = y_starts[row], min(overlap, tile // 2)
        th = min(tile, height - y0)
        total = done + (len(y_starts) - row) * len(tile_starts(width, tile, ov))  # this row on, at this tile

        def on_tile(total=total):
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, max(done, total))

        try:
            band, band_w = _run_row(model, image, scale, y0, th, tile, ov, cancel, on_tile)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
            if not is_out_of_memory(exc) or tile // 2 < minimum:
                raise
            if free_memory is not None:
                free_memory()
            tile, halvings = tile // 2, halvings + 1
            # this row and the ones below are laid out again from this row's top with the smaller tile
            y_starts = y_starts[:row] + [y0 + s for s in tile_starts(height - y0, tile, min(overlap, tile // 2))]
            continue
        if not out.numel():
            out = torch.zeros(band.shape[0], band.shape[1], height * scale, width * scale)
        out[..., y0 * scale:(y0 + th) * scale, :] += band
        weights[..., y0 * scale:(y0 + th) * scale, :] += band_w
        row += 1
    return Tiled(out / weights, tile, done, halvings)


def boundary_lines(length: int, tile: int, overlap: int, scale: int) -> list[int]:
    """Output positions of the tile edges inside the image (where a seam would show)."""
    starts = tile_starts(length, tile, overlap)
    edges = {s * scale for s in starts[1:]} | {(s + tile) * scale for s in starts[:-1]}
    return sorted(e for e in edges if 0 < e < length * scale)


def measure_seam(model: Callable, image, scale: int, tile_size: int, overlap: int = 16) -> Seam:
    """Compare the tiled and untiled outputs of `model` on `image`: their largest and mean absolute difference,
    and the gradient across the tile edges in both (a seam is a step there that the untiled output lacks)."""
    import torch

    whole = model(image).float().cpu()
    tiled = tiled_upscale(model, image, scale, tile_size, overlap).image
    diff = (tiled - whole).abs()
    _, _, height, width = image.shape
    ov = min(overlap, tile_size // 2)
    cols = [c - 1 for c in boundary_lines(width, tile_size, ov, scale)]  # step from column c-1 to c
    rows = [r - 1 for r in boundary_lines(height, tile_size, ov, scale)]

    def steps(out):
        """(|step| per column boundary, per row boundary) averaged over the image."""
        return ((out[..., :, 1:] - out[..., :, :-1]).abs().mean(dim=(0, 1, 2)),
                (out[..., 1:, :] - out[..., :-1, :]).abs().mean(dim=(0, 1, 3)))

    (tx, ty), (wx, wy) = steps(tiled), steps(whole)
    keep_x, keep_y = torch.ones_like(tx, dtype=torch.bool), torch.ones_like(ty, dtype=torch.bool)
    keep_x[cols], keep_y[rows] = False, False

    def mean(*parts) -> float:
        joined = torch.cat(parts)
        return float(joined.mean()) if len(joined) else 0.0

    return Seam(float(diff.max()), float(diff.mean()), mean(tx[cols], ty[rows]), mean(wx[cols], wy[rows]),
                mean(tx[keep_x], ty[keep_y]))
