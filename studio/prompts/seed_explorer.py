"""The seed explorer's jobs as GenerationRequests: one prompt over N seeds (a grid to pick from), then M
variations of the picked seed (A1111's variation seed + strength: the seed stays, the variation seed counts up)."""

from __future__ import annotations

import random
from dataclasses import replace

from studio.errors import check_range

MAX_SEED = 2**32 - 1
MAX_GRID = 16


def seed_grid_request(base, count: int, first_seed: int = -1):
    """`base` over `count` consecutive seeds from `first_seed` (-1: a random start), one image per seed."""
    count = check_range("count", count, 1, MAX_GRID, int)
    first = check_range("first_seed", -1 if first_seed is None else first_seed, -1, MAX_SEED, int)
    first = first if first >= 0 else random.randrange(MAX_SEED - MAX_GRID)
    return replace(base, seed=first, batch_count=count, batch_size=1, variation_strength=0.0, variation_seed=-1,
                   source="prompts")


def variations_request(base, seed: int, count: int, strength: float, variation_seed: int = -1):
    """`count` variations of `seed`: the same seed, variation seeds from `variation_seed` (-1: random) upward,
    each blended in at `strength` (0 = the seed's own image, 1 = the variation seed's)."""
    count = check_range("count", count, 1, MAX_GRID, int)
    seed = check_range("seed", seed, 0, MAX_SEED, int)
    strength = check_range("variation_strength", strength, 0.01, 1.0, float)
    first = check_range("variation_seed", -1 if variation_seed is None else variation_seed, -1, MAX_SEED, int)
    first = first if first >= 0 else random.randrange(MAX_SEED - MAX_GRID)
    return replace(base, seed=seed, batch_count=count, batch_size=1, variation_seed=first,
                   variation_strength=strength, source="prompts")
