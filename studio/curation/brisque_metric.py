"""BRISQUE (Mittal et al., 2012) through the `brisque` package's own SVM model, normalisation and feature fit.

`brisque` 0.2.0 raises `TypeError: only 0-dimensional arrays can be converted to Python scalars` on numpy >= 2.4:
three of its four fitted features per coefficient map come back as 1-element arrays. `BrisqueScorer` returns them
as plain floats. It also computes the MSCN coefficients with a separable Gaussian (OpenCV, zero padding: the same
numbers as the package's `scipy.signal.convolve2d`), fits each distribution with the package's own estimator but
computes each moment once, and skips the package's unused first pass: the same score (tests/test_curation.py
compares them) in about a fifth of the time. The score is the package's: roughly 0 (pristine) .. 100 (badly
distorted), lower is better. Images are scored at the canonical scale (long side <= 512 px,
studio.curation.metrics.WORK_SIDE), not downscaled further, and the studio runs the scorer in its parallel
workers (studio.curation_service).
"""

from __future__ import annotations

import threading

import numpy as np

RGB2GRAY = np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray, which the package uses
_lock = threading.Lock()
_scorer = None


def _gaussian_1d(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    x = np.arange(size) - size // 2
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


class BrisqueScorer:
    """The package's BRISQUE with the numpy >= 2.4 fix and a fast MSCN; `score(rgb)` on float RGB in 0..1."""

    def __init__(self):
        import cv2
        from brisque import BRISQUE

        self._cv2 = cv2
        self._model = BRISQUE(url=False)
        self._kernel = _gaussian_1d()

    def mscn(self, gray: np.ndarray) -> np.ndarray:
        """Mean-subtracted contrast-normalised coefficients, as the package computes them (C = 1/255)."""
        cv2, k = self._cv2, self._kernel
        blur = lambda a: cv2.sepFilter2D(a, cv2.CV_64F, k, k, borderType=cv2.BORDER_CONSTANT)  # noqa: E731
        mu = blur(gray)
        sigma = np.sqrt(np.abs(mu ** 2 - blur(gray * gray)))
        return (gray - mu) / (sigma + 1 / 255)

    @staticmethod
    def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
        """The package's asymmetric generalised Gaussian fit (`asymmetric_generalized_gaussian_fit`: the same
        moment matching and the same root finding from 0.2), with each moment computed once instead of four
        boolean-indexed copies, and plain floats out. Returns (alpha, mean, sigma_left, sigma_right)."""
        from scipy import optimize, special

        x = np.ravel(x)
        negative = x < 0
        n_left = int(negative.sum())
        left_sq = float(np.square(np.minimum(x, 0)).sum())
        right_sq = float(np.square(np.maximum(x, 0)).sum())
        left, right = left_sq / max(n_left, 1), right_sq / max(x.size - n_left, 1)
        r_hat = float(np.abs(x).mean()) ** 2 / ((left_sq + right_sq) / x.size)
        gamma = np.sqrt(left) / np.sqrt(right)
        big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2

        def phi(a):
            return special.gamma(2 / a) ** 2 / (special.gamma(1 / a) * special.gamma(3 / a))

        alpha = float(optimize.root(lambda z: phi(z) - big_r, [0.2]).x[0])
        sigma_l, sigma_r = float(np.sqrt(left)), float(np.sqrt(right))
        constant = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
        mean = (sigma_r - sigma_l) * constant * (special.gamma(2 / alpha) / special.gamma(1 / alpha))
        return alpha, float(mean), sigma_l, sigma_r

    def features(self, gray: np.ndarray) -> np.ndarray:
        """The 18 BRISQUE features of one scale, as plain floats (the package's features, flattened)."""
        coefficients = self._model.calculate_pair_product_coefficients(self.mscn(gray))
        out = []
        for name, values in coefficients.items():
            alpha, mean, sigma_l, sigma_r = self.aggd_fit(values)
            out += [alpha, (sigma_l ** 2 + sigma_r ** 2) / 2] if name == "mscn" else \
                [alpha, mean, sigma_l ** 2, sigma_r ** 2]
        return np.array(out, dtype=np.float64)

    def score(self, rgb: np.ndarray) -> float:
        """BRISQUE of an RGB (h, w, 3) or grey (h, w) image in 0..1: about 0 (pristine) .. 100 (distorted)."""
        rgb = np.asarray(rgb, dtype=np.float64)
        gray = rgb if rgb.ndim == 2 else sum(rgb[..., c] * RGB2GRAY[c] for c in range(3))
        half = self._cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=self._cv2.INTER_CUBIC)
        feats = np.concatenate([self.features(gray), self.features(half)])
        return float(self._model.calculate_image_quality_score(feats))


def brisque_score(rgb: np.ndarray) -> float:
    """BRISQUE with one shared scorer per process (the model loads once)."""
    global _scorer
    with _lock:
        if _scorer is None:
            _scorer = BrisqueScorer()
    return _scorer.score(rgb)
