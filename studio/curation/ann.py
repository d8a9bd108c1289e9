"""Near neighbours by cosine similarity without an n x n matrix: random-hyperplane LSH in pure numpy.

`LshIndex(vectors)` hashes every vector into TABLES tables of `bits` sign bits (hyperplanes through the data's
mean, so embeddings that crowd into one cone, as CLIP's do, still spread over the buckets; bits ~ log2(n / 4), so
a bucket holds a few vectors). Each table sorts the vectors by (bucket, one more projection); the candidates of a
vector are those within WINDOW places of it in the same bucket. A candidate pair is screened by the Hamming
distance of all its sign bits (an estimate of the angle, with the threshold moved to the centred vectors exactly
for that pair, plus three standard deviations), then checked exactly. Memory: O(n x TABLES).

A pair at cosine c shares one table's bucket with probability about (1 - arccos(c) / pi) ** bits, so recall rises
with TABLES; bench/curation.py measures it and the time on 100,000 vectors with 1,000 planted pairs (recall
0.994 in 1.4 s here). Below EXACT_MAX vectors, `near_pairs` compares every pair exactly in blocks instead.
"""

from __future__ import annotations

import numpy as np

TABLES = 20
WINDOW = 8
EXTRA_BITS = 21          # the in-bucket ordering projection, quantised into the low bits of the sort key
EXACT_MAX = 4096
BLOCK = 2048


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_between(query: np.ndarray, base: np.ndarray, threshold: float, block: int = BLOCK) -> np.ndarray:
    """Every (i, j, cosine) with cos(query[i], base[j]) >= threshold (unit vectors), exactly, in blocks of both
    (memory: block x 16 block): an (m, 3) float64 array."""
    found = [np.zeros((0, 3))]
    for base_start in range(0, len(base), 16 * block):
        base32 = _f32(base[base_start:base_start + 16 * block])
        for start in range(0, len(query), block):
            sims = _f32(query[start:start + block]) @ base32.T
            i, j = np.nonzero(sims >= threshold)
            found.append(np.stack([i + start, j + base_start, sims[i, j]], axis=1))
    return np.concatenate(found)


def exact_pairs(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Every (i, j, cosine) with i < j and cosine >= threshold, exactly (n x n work, in blocks)."""
    found = exact_between(vectors, vectors, threshold)
    return found[found[:, 0] < found[:, 1]]


class LshIndex:
    """Sign-random-projection LSH over unit vectors (rows of `vectors`, float16 or float32)."""

    def __init__(self, vectors: np.ndarray, tables: int = TABLES, bits: int | None = None, window: int = WINDOW,
                 seed: int = 0, block: int = 65536):
        self.vectors = vectors
        n, dim = vectors.shape
        self.tables, self.window = tables, window
        self.bits = bits or int(np.clip(round(np.log2(max(n, 2) / 4)), 6, 62 - EXTRA_BITS))
        rng = np.random.default_rng(seed)
        self.mean = _f32(vectors[:min(n, 20000)]).mean(axis=0) if n else np.zeros(dim, np.float32)
        self.planes = rng.standard_normal((dim, tables * (self.bits + 1))).astype(np.float32)
        self.m2 = float(self.mean @ self.mean)
        sample = _f32(vectors[:min(n, 20000)]) - self.mean
        # a centred vector of norm r projects onto a Gaussian plane as N(0, r^2): +-2 typical r fill the range
        self.extra_scale = 4.0 * max(float(np.median(np.linalg.norm(sample, axis=1))) if n else 1.0, 1e-6)
        self.along, self.norm, self.sketch, comp = self._hash(vectors, block)
        self.order = np.argsort(comp, axis=0, kind="stable").T          # (tables, n)
        self.sorted = np.take_along_axis(comp, self.order.T, axis=0).T   # (tables, n) composite keys

    def _hash(self, vectors: np.ndarray, block: int):
        """Per vector: its dot with the mean, the norm of its centred copy, the packed sign bits (sketch) and,
        per table, the sort key (bucket << EXTRA_BITS | quantised extra projection)."""
        n = len(vectors)
        t, b = self.tables, self.bits
        along = np.empty(n, np.float32)
        norm = np.empty(n, np.float32)
        sketch = np.empty((n, -(-t * b // 64)), np.uint64)
        comp = np.empty((n, t), np.int64)
        weights = (1 << np.arange(b, dtype=np.int64))[::-1]
        for start in range(0, n, block):
            x = _f32(vectors[start:start + block])
            along[start:start + block] = x @ self.mean
            centred = x - self.mean
            norm[start:start + block] = np.linalg.norm(centred, axis=1)
            proj = (centred @ self.planes).reshape(len(x), t, b + 1)
            signs = proj[:, :, :b] > 0
            keys = signs.astype(np.int64) @ weights                       # (rows, t)
            extra = np.clip((proj[:, :, b] / self.extra_scale + 0.5) * (1 << EXTRA_BITS), 0, (1 << EXTRA_BITS) - 1)
            comp[start:start + block] = (keys << EXTRA_BITS) | extra.astype(np.int64)
            packed = np.packbits(signs.reshape(len(x), -1), axis=1)
            packed = np.pad(packed, ((0, 0), (0, sketch.shape[1] * 8 - packed.shape[1])))
            sketch[start:start + block] = packed.view(">u8").astype(np.uint64)
        return along, norm, sketch, comp

    # ------------------------------------------------------------------ candidates
    def _screen(self, i, j, threshold: float, q=None) -> np.ndarray:
        """Which candidate pairs may reach `threshold`, judged from their sign bits."""
        along_i, norm_i, sketch_i = (self.along[i], self.norm[i], self.sketch[i]) if q is None else (
            q[0][i], q[1][i], q[2][i])
        centred = (threshold - along_i - self.along[j] + self.m2) / np.maximum(norm_i * self.norm[j], 1e-12)
        total = self.tables * self.bits
        p = np.arccos(np.clip(centred, -1, 1)) / np.pi
        limit = total * p + 3 * np.sqrt(total * p * (1 - p)) + 2
        return np.bitwise_count(sketch_i ^ self.sketch[j]).sum(axis=1) <= limit

    def _check(self, i, j, threshold: float, query=None) -> np.ndarray:
        """(i, j, cosine) of the unique pairs whose exact cosine reaches `threshold`."""
        if not len(i):
            return np.zeros((0, 3))
        code = np.unique(i.astype(np.int64) * len(self.vectors) + j)
        i, j = code // len(self.vectors), code % len(self.vectors)
        left = self.vectors if query is None else query
        out = [np.zeros((0, 3))]
        for start in range(0, len(i), 1 << 16):
            a, b = i[start:start + (1 << 16)], j[start:start + (1 << 16)]
            sims = np.einsum("ij,ij->i", _f32(left[a]), _f32(self.vectors[b]))
            keep = sims >= threshold
            out.append(np.stack([a[keep], b[keep], sims[keep]], axis=1))
        return np.concatenate(out)

    def pairs(self, threshold: float) -> np.ndarray:
        """Every (i, j, cosine) with i < j and cosine >= threshold that the tables bring together."""
        cand_i, cand_j = [], []
        for t in range(self.tables):
            order, keys = self.order[t], self.sorted[t] >> EXTRA_BITS
            for d in range(1, min(self.window, len(order) - 1) + 1):
                same = np.nonzero(keys[:-d] == keys[d:])[0]
                a, b = order[same], order[same + d]
                i, j = np.minimum(a, b), np.maximum(a, b)
                keep = self._screen(i, j, threshold)
                cand_i.append(i[keep])
                cand_j.append(j[keep])
        return self._check(np.concatenate(cand_i or [np.zeros(0, np.int64)]),
                           np.concatenate(cand_j or [np.zeros(0, np.int64)]), threshold)

    def query(self, query: np.ndarray, threshold: float) -> np.ndarray:
        """Every (i, j, cosine) with cos(query[i], indexed[j]) >= threshold that the tables bring together."""
        along, norm, sketch, comp = self._hash(query, 65536)
        n = len(self.vectors)
        cand_i, cand_j = [], []
        rows = np.arange(len(query))
        for t in range(self.tables):
            pos = np.searchsorted(self.sorted[t], comp[:, t])
            for d in range(-(self.window // 2), self.window - self.window // 2):
                at = pos + d
                ok = (at >= 0) & (at < n)
                i, at = rows[ok], at[ok]
                same = (self.sorted[t][at] >> EXTRA_BITS) == (comp[i, t] >> EXTRA_BITS)
                i, j = i[same], self.order[t][at[same]]
                keep = self._screen(i, j, threshold, (along, norm, sketch))
                cand_i.append(i[keep])
                cand_j.append(j[keep])
        return self._check(np.concatenate(cand_i or [np.zeros(0, np.int64)]),
                           np.concatenate(cand_j or [np.zeros(0, np.int64)]), threshold, query)


def near_pairs(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Every (i, j, cosine), i < j, of unit vectors at cosine >= threshold: exact below EXACT_MAX vectors, else
    through an LshIndex (approximate: see the module's note on recall)."""
    if len(vectors) <= EXACT_MAX:
        return exact_pairs(vectors, threshold)
    return LshIndex(vectors).pairs(threshold)


def near_between(query: np.ndarray, base: np.ndarray, threshold: float) -> np.ndarray:
    """Every (i, j, cosine) with cos(query[i], base[j]) >= threshold: exact while len(query) x len(base) is
    small (a few new images against everything), else an LshIndex over `base`."""
    if len(query) * len(base) <= EXACT_MAX * EXACT_MAX or len(query) <= 8:
        return exact_between(query, base, threshold)
    return LshIndex(base).query(query, threshold)
