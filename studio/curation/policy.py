"""The metric table, the combined score, verdicts with their one-line reasons, and thresholds learnt from overrides.

Every metric has a goodness in 0..1 (1 = good) derived from its own scale. The combined score is the weighted
geometric mean of the available metrics' goodness (each floored at GOODNESS_FLOOR), so one bad metric pulls the
score down as a person would, and a weight of 0 leaves a metric out. A verdict is
  * "rejected" when a rule fails (a metric past its limit: "blurry: 0.31 < 0.45") or the combined score is below
    the accept threshold ("low score: 0.41 < 0.50"),
  * "duplicate" when a better-scored near-duplicate exists (studio.curation.dedup),
  * "accepted" otherwise ("score 0.78 >= 0.50").
A person's verdict ("accepted", "rejected", "featured") always wins over the automatic one.

Everything here works on whole columns (numpy arrays, NaN = unavailable), so the Curate tab previews a new
policy over every scored image at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

GOODNESS_FLOOR = 0.02
AUTO_VERDICTS = ("accepted", "rejected", "duplicate")
MANUAL_VERDICTS = ("accepted", "rejected", "featured")
VERDICTS = ("accepted", "featured", "rejected", "duplicate", "error")


def _clip(x):
    return np.clip(x, 0.0, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it reads, which way is better, its default rule limit and weight, its goodness."""

    key: str
    title: str              # column and slider label
    label: str              # the word a failed rule gives as its reason ("blurry")
    higher_is_better: bool
    limit: float | None     # default rule limit (None: no rule)
    weight: float           # default weight in the combined score
    scale: str              # what the raw number means
    goodness: Callable      # raw (array) -> 0..1 (array)
    digits: int = 2


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("sharpness", "Sharpness", "blurry", True, 0.45, 2.0,
               "0..1, 1 = sharp (1 - the blurriest direction's blur effect)", lambda v: _clip((v - 0.35) / 0.35)),
    MetricSpec("motion_blur", "Motion blur", "motion blur", False, 0.2, 1.0,
               "0..1, 0 = same blur in every direction", lambda v: _clip(1 - (v - 0.1) / 0.15)),
    MetricSpec("blockiness", "JPEG blocks", "JPEG blocks", False, 0.6, 1.0,
               "0..1, 0 = no 8x8 grid", lambda v: _clip(1 - v)),
    MetricSpec("banding", "Banding", "banding", False, 0.6, 0.5,
               "0..1, 0 = no quantisation steps in smooth areas", lambda v: _clip(1 - v)),
    MetricSpec("clipping", "Clipped", "clipped", False, 0.3, 0.5,
               "share of pixels clipped to black or white", lambda v: _clip(1 - v / 0.5)),
    MetricSpec("noise", "Noise", "noisy", False, 8.5, 1.0,
               "noise estimate in levels (0..255)", lambda v: _clip(1 - (v - 2) / 7), digits=1),
    MetricSpec("contrast", "Contrast", "low contrast", True, 0.03, 0.5,
               "RMS contrast (0..0.5)", lambda v: _clip(v / 0.1), digits=3),
    MetricSpec("brisque", "BRISQUE", "BRISQUE", False, 65.0, 1.0,
               "about 0 (pristine) .. 100 (distorted)", lambda v: _clip((90 - v) / 60), digits=0),
    MetricSpec("adherence", "Prompt adherence", "off-prompt", True, 0.5, 2.0,
               "0..1, the shapes-world evaluator's overall score (built-in model images)", lambda v: _clip(v)),
    MetricSpec("clip_score", "CLIP score", "off-prompt (CLIP)", True, None, 1.0,
               "cosine similarity of image and prompt embeddings (about 0.1..0.4)",
               lambda v: _clip((v - 0.15) / 0.2)),
    MetricSpec("aesthetic", "Aesthetic", "unaesthetic", True, None, 1.0,
               "LAION aesthetic predictor, about 1..10", lambda v: _clip((v - 3) / 4), digits=1),
    MetricSpec("laplacian_var", "Laplacian variance", "low Laplacian variance", True, None, 0.0,
               "variance of the Laplacian (raw, the plain blur baseline)", lambda v: _clip(v / 0.01), digits=5),
)
SPECS = {m.key: m for m in METRICS}
KEYS = tuple(m.key for m in METRICS)


@dataclass
class Policy:
    """What turns metrics into verdicts: weights, per-metric rule limits, the accept threshold and the
    near-duplicate radius (pHash + dHash Hamming distance, of 128 bits) and, where CLIP embeddings exist, the
    cosine similarity at or above which two images are near-duplicates too (0.95: the usual cut for
    near-duplicates on CLIP image embeddings; unrelated images of one subject sit lower)."""

    weights: dict[str, float] = field(default_factory=lambda: {m.key: m.weight for m in METRICS})
    limits: dict[str, float | None] = field(default_factory=lambda: {m.key: m.limit for m in METRICS})
    threshold: float = 0.5
    dedup_radius: int = 28
    dedup_cosine: float = 0.95

    @classmethod
    def from_dict(cls, data: dict | None) -> "Policy":
        base = cls()
        data = data or {}
        weights = {**base.weights, **{k: float(v) for k, v in (data.get("weights") or {}).items() if k in SPECS}}
        limits = {**base.limits, **{k: (None if v is None else float(v))
                                    for k, v in (data.get("limits") or {}).items() if k in SPECS}}
        return cls(weights, limits, float(data.get("threshold", base.threshold)),
                   int(data.get("dedup_radius", base.dedup_radius)),
                   float(data.get("dedup_cosine", base.dedup_cosine)))

    def to_dict(self) -> dict:
        return asdict(self)


def fmt(key: str, value: float) -> str:
    """A metric value as the reasons and the breakdown show it."""
    return f"{value:.{SPECS[key].digits}f}"


# ------------------------------------------------------------------ columns
def matrix(rows: list[dict]) -> np.ndarray:
    """(n, len(KEYS)) float64 of the metrics in `rows` (dicts key -> value), NaN where one is missing."""
    out = np.full((len(rows), len(KEYS)), np.nan)
    for i, row in enumerate(rows):
        for j, key in enumerate(KEYS):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[i, j] = value
    return out


def goodness(values: np.ndarray) -> np.ndarray:
    """Column-wise goodness (0..1, NaN stays NaN) of a metrics matrix."""
    out = np.full(values.shape, np.nan)
    for j, spec in enumerate(METRICS):
        col = values[:, j]
        ok = ~np.isnan(col)
        out[ok, j] = spec.goodness(col[ok])
    return out


def combined_scores(values: np.ndarray, policy: Policy) -> np.ndarray:
    """The weighted geometric mean of each row's available goodness (NaN when no weighted metric is there)."""
    g = goodness(values)
    w = np.array([max(0.0, policy.weights.get(k, 0.0)) for k in KEYS])
    have = ~np.isnan(g) & (w > 0)
    logs = np.where(have, np.log(np.maximum(np.nan_to_num(g, nan=1.0), GOODNESS_FLOOR)), 0.0)
    total = (have * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.exp((logs * w).sum(axis=1) / np.where(total > 0, total, 1)), np.nan)


def rule_failures(values: np.ndarray, policy: Policy) -> np.ndarray:
    """(n, len(KEYS)) bool: where a metric is past its rule's limit."""
    out = np.zeros(values.shape, bool)
    for j, spec in enumerate(METRICS):
        limit = policy.limits.get(spec.key)
        if limit is None:
            continue
        col = values[:, j]
        with np.errstate(invalid="ignore"):
            out[:, j] = (col < limit) if spec.higher_is_better else (col > limit)
    return out


@dataclass
class Verdicts:
    """Automatic verdicts of many images before duplicates: score, rejected or not, the reason per image."""

    scores: np.ndarray
    rejected: np.ndarray
    failures: np.ndarray
    reasons: list[str]


def judge(values: np.ndarray, policy: Policy, reasons: bool = True) -> Verdicts:
    """Rules, then the threshold, for every row of a metrics matrix (`reasons=False`: no reason strings, for
    previews over many images)."""
    scores = combined_scores(values, policy)
    failures = rule_failures(values, policy)
    low = ~(scores >= policy.threshold)  # NaN (nothing to score) counts as low
    texts: list[str] = []
    for i in range(values.shape[0] if reasons else 0):
        parts = []
        for j in np.flatnonzero(failures[i]):
            spec = METRICS[j]
            sign = "<" if spec.higher_is_better else ">"
            parts.append(f"{spec.label}: {fmt(spec.key, values[i, j])} {sign} {fmt(spec.key, policy.limits[spec.key])}")
        if low[i]:
            shown = "n/a" if np.isnan(scores[i]) else f"{scores[i]:.2f}"
            parts.append(f"low score: {shown} < {policy.threshold:.2f}")
        texts.append("; ".join(parts) if parts else f"score {scores[i]:.2f} >= {policy.threshold:.2f}")
    return Verdicts(scores, failures.any(axis=1) | low, failures, texts)


def rule_counts(verdicts: Verdicts) -> dict[str, int]:
    """How many images each rule rejected (an image failing two rules counts for both), and the threshold."""
    counts = {METRICS[j].label: int(verdicts.failures[:, j].sum()) for j in range(len(METRICS))}
    counts = {k: v for k, v in counts.items() if v}
    low = int((~(verdicts.scores >= 0) | (verdicts.rejected & ~verdicts.failures.any(axis=1))).sum())
    if low:
        counts["low score"] = low
    return counts


# ------------------------------------------------------------------ learning from overrides
MIN_OVERRIDES = 20


@dataclass
class Suggestion:
    """Weights and threshold fitted to a person's overrides, with the agreement before and after."""

    policy: Policy
    before: float      # share of the overrides the current policy agrees with
    after: float       # the same for the fitted policy, cross-validated (held-out folds)
    samples: int
    used: list[str]    # the metrics the fit used

    @property
    def message(self) -> str:
        return (f"your {self.samples} overrides: {self.before:.0%} -> {self.after:.0%} agreement "
                f"(cross-validated; metrics used: {', '.join(SPECS[k].title for k in self.used)})")


def _agreement(values: np.ndarray, wanted: np.ndarray, policy: Policy) -> float:
    return float(((~judge(values, policy, False).rejected) == wanted).mean()) if len(wanted) else 0.0


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000) -> tuple[np.ndarray, float]:
    """Logistic regression p = sigmoid(b + x @ beta) with beta >= 0 (projected gradient, Adam steps)."""
    n, k = x.shape
    beta, b = np.full(k, 0.5), 0.0
    m, v = np.zeros(k + 1), np.zeros(k + 1)
    lr, b1, b2 = 0.05, 0.9, 0.999
    for t in range(1, steps + 1):
        p = 1 / (1 + np.exp(-(b + x @ beta)))
        grad = np.concatenate([x.T @ (p - y) / n + l2 * beta, [np.mean(p - y)]])
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad ** 2
        step = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
        beta = np.maximum(0.0, beta - step[:k])
        b -= step[k]
    return beta, b


def _policy_from_fit(policy: Policy, used: list[str], beta: np.ndarray, b: float, values: np.ndarray,
                     accepted: np.ndarray) -> Policy:
    """The fitted weights (the largest scaled to the current largest weight of the metrics used), and the
    threshold that agrees best with `accepted` on `values` under the whole policy (rules included). Accept iff
    b + sum(beta * log g) > 0 is the same as: weighted geometric mean (weights beta) > exp(-b / sum(beta)), so
    the search starts from that value."""
    weights = dict(policy.weights)
    if float(beta.sum()) > 1e-9:
        scale = max(policy.weights.get(k, 0.0) for k in used) or 1.0
        for key, w in zip(used, beta):
            weights[key] = round(float(w / beta.max() * scale), 3)
        start = float(np.clip(np.exp(-b / float(beta.sum())), 0.0, 1.0))
    else:  # nothing predicts the overrides: keep the weights, move only the threshold
        start = policy.threshold
    fitted = Policy(weights, dict(policy.limits), start, policy.dedup_radius, policy.dedup_cosine)
    scores = combined_scores(values, fitted)
    ruled = rule_failures(values, fitted).any(axis=1)
    known = np.unique(np.round(scores[~np.isnan(scores)], 4))
    candidates = np.concatenate([[start, 0.0, 1.0], (known[:-1] + known[1:]) / 2]) if len(known) else [start]
    best, best_hits = start, -1
    for t in candidates:  # the most agreeing threshold; ties go to the one closest to the fit's own
        hits = int(((~ruled & (scores >= t)) == accepted).sum())
        if hits > best_hits or (hits == best_hits and abs(t - start) < abs(best - start)):
            best, best_hits = float(t), hits
    fitted.threshold = round(best, 4)
    return fitted


def suggest(values: np.ndarray, accepted: np.ndarray, policy: Policy, folds: int = 5,
            seed: int = 0) -> Suggestion:
    """Fit the weights (>= 0) and the accept threshold to manual verdicts (`accepted`: True for accepted or
    featured, False for rejected) on the metrics every overridden image has: a logistic regression on
    log-goodness (exactly the combined score's form) gives the weights, then the threshold that agrees best.
    The agreement after is measured on held-out folds (k-fold cross-validation: fitted without them); the rule
    limits are kept. ValueError with fewer than MIN_OVERRIDES."""
    accepted = np.asarray(accepted, bool)
    if len(accepted) < MIN_OVERRIDES:
        raise ValueError(f"suggesting thresholds needs at least {MIN_OVERRIDES} overridden verdicts; "
                         f"there are {len(accepted)}")
    g = goodness(values)
    used_cols = [j for j, k in enumerate(KEYS) if k != "laplacian_var" and not np.isnan(g[:, j]).any()]
    used = [KEYS[j] for j in used_cols]
    x = np.log(np.maximum(g[:, used_cols], GOODNESS_FLOOR))
    y = accepted.astype(float)
    before = _agreement(values, accepted, policy)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    hits = 0
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        beta, b = _fit_logistic(x[train], y[train])
        fold_policy = _policy_from_fit(policy, used, beta, b, values[train], accepted[train])
        hits += int(((~judge(values[test], fold_policy, False).rejected) == accepted[test]).sum())
    beta, b = _fit_logistic(x, y)
    return Suggestion(_policy_from_fit(policy, used, beta, b, values, accepted), before, hits / len(y), len(y),
                      used)
