"""Near-duplicate detection: pHash + dHash (imagehash), grouped by their summed Hamming distance.

Two images are near-duplicates when pHash distance + dHash distance <= radius (of 128 bits; default 28, see
studio.curation.policy.Policy). Measured on scikit-image's sample photos (bench/curation.py): JPEG q70, +8%
brightness and half-size copies stay within 4, 95% crops within 30, 2-degree rotations mostly within 25, while
different photos are 42 or more apart.

At a radius of 22% of the bits no metric index prunes: a BK-tree visits about 99% of its nodes per query (10,000
random hashes: 3.5 ms a query, 35 s for all) and multi-index hashing would need 29 exact-match chunks of 4 bits.
So `near_pairs` compares every pair, exactly, with numpy's popcount in blocks of rows (memory: block x n, never
n x n): 10,000 hashes in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024


def image_hashes(img) -> tuple[str, str]:
    """(pHash, dHash) of a PIL image as 16-digit hex strings (64 bits each)."""
    import imagehash

    img = img.convert("L") if img.mode not in ("L", "RGB") else img
    return str(imagehash.phash(img)), str(imagehash.dhash(img))


def hash_array(pairs: list[tuple[str, str]]) -> np.ndarray:
    """(n, 2) uint64 from (pHash hex, dHash hex) pairs."""
    out = np.zeros((len(pairs), 2), dtype=np.uint64)
    for i, (p, d) in enumerate(pairs):
        out[i] = (int(p, 16), int(d, 16))
    return out


def link_text(value) -> str:
    """How a near-duplicate link reads: the summed hash distance (an int) or, where only the CLIP embeddings
    link two images, their cosine similarity (a float)."""
    return f"cosine {value:.3f}" if isinstance(value, float) else f"distance {value}"


def distance(a: tuple[str, str], b: tuple[str, str]) -> int:
    """Summed pHash + dHash Hamming distance of two hash pairs."""
    return sum((int(x, 16) ^ int(y, 16)).bit_count() for x, y in zip(a, b))


def near_pairs(hashes: np.ndarray, radius: int, block: int = BLOCK) -> np.ndarray:
    """Every pair (i, j, distance) with i < j and summed distance <= radius, as an (m, 3) int64 array."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found = []
    for start in range(0, n, block):
        rows = hashes[start:start + block]
        rest = hashes[start:]  # only j >= i: the upper triangle
        d = np.bitwise_count(rows[:, None, 0] ^ rest[None, :, 0]).astype(np.int16)
        d += np.bitwise_count(rows[:, None, 1] ^ rest[None, :, 1])
        i, j = np.nonzero(d <= radius)
        keep = j > i
        i, j = i[keep], j[keep]
        found.append(np.stack([i + start, j + start, d[i, j]], axis=1).astype(np.int64))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def near_between(query: np.ndarray, base: np.ndarray, radius: int, block: int = BLOCK) -> np.ndarray:
    """Every (i, j, distance) with query[i] and base[j] within `radius`, as an (m, 3) int64 array: a batch of new
    images against everything scored before (len(query) x len(base) comparisons, in blocks)."""
    query = np.ascontiguousarray(query, dtype=np.uint64)
    base = np.ascontiguousarray(base, dtype=np.uint64)
    found = [np.zeros((0, 3), np.int64)]
    for start in range(0, len(query), block):
        rows = query[start:start + block]
        d = np.bitwise_count(rows[:, None, 0] ^ base[None, :, 0]).astype(np.int16)
        d += np.bitwise_count(rows[:, None, 1] ^ base[None, :, 1])
        i, j = np.nonzero(d <= radius)
        found.append(np.stack([i + start, j, d[i, j]], axis=1).astype(np.int64))
    return np.concatenate(found)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return [g for g in groups.values() if len(g) > 1]


@dataclass
class DuplicateGroup:
    """Images that are near-duplicates of one another (connected through pairs within the radius)."""

    keep: int              # index of the best-scored member
    members: list[int]     # every member's index, `keep` first
    distance_to_keep: dict[int, int]  # member -> its distance to `keep` (None-free: computed directly)


def group_duplicates(hashes: np.ndarray, scores, radius: int) -> list[DuplicateGroup]:
    """Near-duplicate groups; the member with the highest score is kept (ties: the lowest index)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=-1.0)
    groups = []
    for members in _components(len(hashes), near_pairs(hashes, radius)):
        keep = max(members, key=lambda i: (scores[i], -i))
        ordered = [keep] + [m for m in members if m != keep]
        dist = {m: int(np.bitwise_count(hashes[m] ^ hashes[keep]).sum()) for m in ordered}
        groups.append(DuplicateGroup(keep, ordered, dist))
    return groups
