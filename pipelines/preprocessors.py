"""ControlNet preprocessors ("annotators"): turn a picture into the map a ControlNet reads.

Always offline, no weights: none (the image is already a map), invert (black lines on white -> white on black),
canny (low/high thresholds), scribble (XDoG, as A1111's scribble_xdog), shuffle (content shuffle) and tile
(downscale by a rate, then back up). They are written here on OpenCV with the algorithms controlnet-aux and A1111
use; importing controlnet-aux costs about 5 s (it imports every detector and timm), which a canny map should not.

With detector weights: depth (MiDaS, Zoe), openpose (body, body + hand + face), lineart (fine, coarse), softedge
and scribble from HED, MLSD and normal (BAE) run controlnet-aux's detectors, loaded with
`from_pretrained(<models>/ControlNet/annotators)`: the files of lllyasviel/Annotators, named as there. When online
and a file is missing, controlnet-aux downloads it from that repo on first use. Offline without the files each is
listed as unavailable with the reason, and refused with it. The files are pickles: torch.load reads them with
torch's default `weights_only=True` (torch >= 2.6), and a process that forces the unsafe default
(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) is refused.

Maps are cached (LRU of a few: the same image and settings give the same map without running again) and timed.
Detectors are model-cache entries (key ("annotator:<name>", "annotator")) when a ModelCache is given.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ANNOTATORS_REPO = "lllyasviel/Annotators"
MAX_CACHED_MAPS = 8
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048


class PreprocessorError(ValueError):
    """A preprocessor that is unknown, unavailable (with the reason), or given a setting out of range."""


@dataclass(frozen=True)
class Threshold:
    """A preprocessor's adjustable number: its label in the UI and infotext, range, default and step."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float = 1.0


@dataclass(frozen=True)
class Preprocessor:
    name: str
    description: str
    threshold_a: Threshold | None = None
    threshold_b: Threshold | None = None
    weights: tuple[str, ...] = ()  # files it needs under the annotators folder
    detector: str = ""  # controlnet_aux class that loads them


# ---------------------------------------------------------------------- the offline ones (numpy RGB uint8)
def _none(img, a, b):
    return img


def _invert(img, a, b):
    return 255 - img


def _canny(img, low, high):
    import cv2

    return cv2.Canny(img, int(low), int(high))


def _scribble_xdog(img, threshold, b):
    """Scribble by XDoG (A1111's scribble_xdog): a difference of two Gaussians, thresholded into white strokes on
    black. A1111 takes the smallest channel difference, which finds no line between two colours of equal
    brightness (red on blue); the largest one is taken here, so any channel's edge draws a stroke."""
    import cv2
    import numpy as np

    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    out = np.zeros(img.shape[:2], dtype=np.uint8)
    out[2 * np.max(g2 - g1, axis=2) > threshold] = 255
    return out


def _noise_disk(rng, h: int, w: int, f: int):
    """controlnet-aux's make_noise_disk with its own random generator (a fixed seed: the same map every time)."""
    import cv2
    import numpy as np

    noise = rng.uniform(0, 1, size=((h // f) + 2, (w // f) + 2))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f:f + h, f:f + w]
    noise -= noise.min()
    return noise / max(float(noise.max()), 1e-8)


def _shuffle(img, seed, b):
    """Content shuffle (controlnet-aux's ContentShuffleDetector, f=256): pixels moved along a smooth random flow."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    rng = np.random.default_rng(int(seed))
    flow = np.stack([_noise_disk(rng, h, w, 256) * (w - 1), _noise_disk(rng, h, w, 256) * (h - 1)], axis=2)
    return cv2.remap(img, flow.astype(np.float32), None, cv2.INTER_LINEAR)


def _tile(img, rate, b):
    """A1111's tile_resample: down-sample by `rate` (detail the ControlNet may re-invent), then back up."""
    import cv2

    if rate < 1.1:
        return img
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


OFFLINE: dict[str, Callable] = {"none": _none, "invert": _invert, "canny": _canny, "scribble_xdog": _scribble_xdog,
                                "shuffle": _shuffle, "tile_resample": _tile}

# ---------------------------------------------------------------------- the detectors (controlnet-aux + weights)
HED = ("ControlNetHED.pth",)
OPENPOSE = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")
LINEART = ("sk_model.pth", "sk_model2.pth")

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", "the image is already a map"),
    Preprocessor("invert", "black lines on white to white lines on black"),
    Preprocessor("canny", "edges (OpenCV Canny)", Threshold("Low Threshold", 1, 255, 100),
                 Threshold("High Threshold", 1, 255, 200)),
    Preprocessor("scribble_xdog", "scribble from the picture's outlines (XDoG)",
                 Threshold("XDoG Threshold", 1, 64, 32)),
    Preprocessor("shuffle", "content shuffle (style and colours, not layout)", Threshold("Seed", 0, 9999, 0)),
    Preprocessor("tile_resample", "tile: a blurred copy to add detail to",
                 Threshold("Down Sampling Rate", 1, 8, 1, 0.1)),
    Preprocessor("depth_midas", "depth (MiDaS)", weights=("dpt_hybrid-midas-501f0c75.pt",), detector="MidasDetector"),
    Preprocessor("depth_zoe", "depth (ZoeDepth)", weights=("ZoeD_M12_N.pt",), detector="ZoeDetector"),
    Preprocessor("openpose", "pose: body", weights=OPENPOSE, detector="OpenposeDetector"),
    Preprocessor("openpose_full", "pose: body, hands and face", weights=OPENPOSE, detector="OpenposeDetector"),
    Preprocessor("lineart", "line art (fine)", weights=LINEART, detector="LineartDetector"),
    Preprocessor("lineart_coarse", "line art (coarse)", weights=LINEART, detector="LineartDetector"),
    Preprocessor("softedge_hed", "soft edges (HED)", weights=HED, detector="HEDdetector"),
    Preprocessor("scribble_hed", "scribble from HED edges", weights=HED, detector="HEDdetector"),
    Preprocessor("mlsd", "straight lines (M-LSD)", Threshold("MLSD Value Threshold", 0.01, 2, 0.1, 0.01),
                 Threshold("MLSD Distance Threshold", 0.01, 20, 0.1, 0.01), ("mlsd_large_512_fp32.pth",),
                 "MLSDdetector"),
    Preprocessor("normal_bae", "surface normals (BAE)", weights=("scannet.pt",), detector="NormalBaeDetector"),
)}


def _detector_call(name: str, detector, img, resolution: int, a, b):
    size = {"detect_resolution": resolution, "image_resolution": resolution, "output_type": "np"}
    if name in ("softedge_hed", "scribble_hed"):
        return detector(img, scribble=name == "scribble_hed", **size)
    if name in ("openpose", "openpose_full"):
        full = name == "openpose_full"
        return detector(img, include_body=True, include_hand=full, include_face=full, **size)
    if name in ("lineart", "lineart_coarse"):
        return detector(img, coarse=name == "lineart_coarse", **size)
    if name == "mlsd":
        return detector(img, thr_v=a, thr_d=b, **size)
    if name == "depth_midas":
        out = detector(img, **size)
        return out[0] if isinstance(out, tuple) else out
    return detector(img, **size)


class LoadedDetector:
    """A controlnet-aux detector as a model-cache entry: `components` lists its torch modules so the cache can
    count their bytes."""

    def __init__(self, detector):
        import torch

        self.detector = detector
        found, seen = {}, set()

        def collect(obj, prefix: str, depth: int):
            for key, value in vars(obj).items():
                if isinstance(value, torch.nn.Module) and id(value) not in seen:
                    seen.add(id(value))
                    found[f"{prefix}{key}"] = value
                elif depth and hasattr(value, "__dict__") and not isinstance(value, type):
                    collect(value, f"{prefix}{key}.", depth - 1)

        collect(detector, "", 2)
        self.components = found


@dataclass
class ControlMap:
    """A processed map: the image (RGB), how long it took, and whether it came from the cache."""

    image: object
    seconds: float
    cached: bool = False


def image_key(image) -> str:
    """A fingerprint of a PIL image's pixels."""
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def fit_resolution(image, resolution: int):
    """The image (RGB numpy) scaled so its short side is `resolution` (sides rounded to multiples of 8)."""
    import cv2
    import numpy as np

    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    k = resolution / min(h, w)
    size = (max(8, int(round(w * k / 8)) * 8), max(8, int(round(h * k / 8)) * 8))
    if size == (w, h):
        return arr
    return cv2.resize(arr, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


class Preprocessors:
    """Lists the preprocessors with their availability and runs them, caching maps and detectors."""

    def __init__(self, annotators_dir: Path, offline: bool = False, cache=None, max_maps: int = MAX_CACHED_MAPS):
        self.annotators_dir = Path(annotators_dir)
        self.offline = offline
        self.cache = cache  # pipelines.model_cache.ModelCache, or None: detectors kept here
        self._detectors: dict[str, object] = {}
        self._maps: OrderedDict[tuple, object] = OrderedDict()
        self._max_maps = max_maps
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what is there
    def names(self) -> list[str]:
        return list(PREPROCESSORS)

    def get(self, name: str) -> Preprocessor:
        try:
            return PREPROCESSORS[name]
        except KeyError:
            raise PreprocessorError(f"preprocessor must be one of {', '.join(PREPROCESSORS)}; got {name!r}") \
                from None

    def missing(self, name: str) -> list[str]:
        return [f for f in self.get(name).weights if not (self.annotators_dir / f).is_file()]

    def unavailable_reason(self, name: str) -> str | None:
        """Why `name` cannot run here, or None when it can."""
        missing = self.missing(name)
        if missing and self.offline:
            return (f"needs {', '.join(missing)} in {self.annotators_dir} (from {ANNOTATORS_REPO}); the studio "
                    "runs offline")
        if self.get(name).weights and os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
            return "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: detector weights (pickles) would be unpickled unsafely"
        return None

    def status(self) -> dict[str, str | None]:
        """name -> None (available) or the reason it is not."""
        return {name: self.unavailable_reason(name) for name in PREPROCESSORS}

    # ------------------------------------------------------------------ running
    def check(self, name: str, resolution: int, a: float | None, b: float | None) -> tuple[int, float | None,
                                                                                          float | None]:
        """(resolution, threshold a, threshold b) checked against the preprocessor's ranges (None: default)."""
        spec = self.get(name)
        why = self.unavailable_reason(name)
        if why:
            raise PreprocessorError(f"preprocessor {name} is unavailable: {why}")
        try:
            resolution = int(resolution)
        except (TypeError, ValueError):
            raise PreprocessorError(f"processor resolution must be a whole number between {MIN_RESOLUTION} and "
                                    f"{MAX_RESOLUTION}; got {resolution!r}") from None
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise PreprocessorError(f"processor resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}; "
                                    f"got {resolution}")
        values = []
        for value, threshold in ((a, spec.threshold_a), (b, spec.threshold_b)):
            if threshold is None:
                values.append(None)
                continue
            value = threshold.default if value is None else value
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PreprocessorError(f"{threshold.label} of {name} must be a number; got {value!r}") from None
            if not threshold.minimum <= value <= threshold.maximum:
                raise PreprocessorError(f"{threshold.label} of {name} must be between {threshold.minimum:g} and "
                                        f"{threshold.maximum:g}; got {value:g}")
            values.append(value)
        return resolution, values[0], values[1]

    def run(self, name: str, image, resolution: int = 512, a: float | None = None,
            b: float | None = None) -> ControlMap:
        """The map of `image` (PIL) by preprocessor `name` at `resolution` (its short side), RGB."""
        from PIL import Image

        resolution, a, b = self.check(name, resolution, a, b)
        key = (image_key(image), name, resolution, a, b)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return ControlMap(self._maps[key], 0.0, cached=True)
        start = time.perf_counter()
        img = fit_resolution(image, resolution)
        if name in OFFLINE:
            out = OFFLINE[name](img, a, b)
        else:
            with self._detector(name) as detector:
                out = _detector_call(name, detector, img, resolution, a, b)
        out = (out if isinstance(out, Image.Image) else Image.fromarray(out)).convert("RGB")
        seconds = time.perf_counter() - start
        with self._lock:
            self._maps[key] = out
            while len(self._maps) > self._max_maps:
                self._maps.popitem(last=False)
        return ControlMap(out, seconds)

    def _load_detector(self, name: str):
        import controlnet_aux

        spec = self.get(name)
        where = str(self.annotators_dir) if not self.missing(name) else ANNOTATORS_REPO
        try:
            detector = getattr(controlnet_aux, spec.detector).from_pretrained(where)
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party loader is reported as is
            raise PreprocessorError(f"preprocessor {name}: its detector could not be loaded from {where}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        return LoadedDetector(detector)

    def _detector(self, name: str):
        """A context manager yielding the loaded controlnet-aux detector for `name` (pinned while in use)."""
        from contextlib import contextmanager

        kind = self.get(name).detector

        @contextmanager
        def use():
            if self.cache is not None:
                with self.cache.use((f"annotator:{kind}", "annotator"), lambda: self._load_detector(name)) as loaded:
                    yield loaded.detector
                return
            if kind not in self._detectors:
                self._detectors[kind] = self._load_detector(name)
            yield self._detectors[kind].detector

        return use()
