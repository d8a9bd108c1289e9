"""ModelCache with plain tensors/modules standing in for pipelines."""

import threading
import time

import pytest
import torch

from pipelines.model_cache import ModelCache


class FakePipe:
    """Looks like a diffusers pipeline to the cache: a `components` dict of modules."""

    def __init__(self, n_floats: int, shared=None):
        self.components = {"unet": shared or torch.nn.Linear(n_floats, 1, bias=False)}


def loader_for(n_floats, calls):
    def load():
        calls.append(n_floats)
        return FakePipe(n_floats)
    return load


def test_hit_and_miss_counts_and_bytes():
    cache = ModelCache(budget_bytes=10_000)
    calls = []
    with cache.use(("a", "txt2img"), loader_for(100, calls)) as pipe:
        assert isinstance(pipe, FakePipe) and pipe.components["unet"].in_features == 100
    with cache.use(("a", "txt2img"), loader_for(100, calls)):
        pass
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.loads) == (1, 1, 1)
    assert calls == [100]
    assert stats.used_bytes == 400


def test_lru_eviction_respects_budget_and_order():
    evicted = []
    cache = ModelCache(budget_bytes=1000, on_evict=lambda: evicted.append(1))
    calls = []
    for name in ("a", "b"):
        with cache.use((name, "txt2img"), loader_for(100, calls)):
            pass
    with cache.use(("a", "txt2img"), loader_for(100, calls)):  # a is now most recent
        pass
    with cache.use(("c", "txt2img"), loader_for(100, calls)):
        pass
    assert ("b", "txt2img") not in cache
    assert ("a", "txt2img") in cache and ("c", "txt2img") in cache
    assert cache.used_bytes() == 800 and evicted == [1]


def test_pinned_entry_is_not_evicted_while_in_use():
    cache = ModelCache(budget_bytes=500)
    calls = []
    with cache.use(("a", "txt2img"), loader_for(100, calls)):
        with cache.use(("b", "txt2img"), loader_for(100, calls)):
            assert ("a", "txt2img") in cache  # over budget, but both pinned
        assert ("a", "txt2img") in cache
    assert ("a", "txt2img") in cache and ("b", "txt2img") not in cache  # b went as soon as it was released
    assert cache.used_bytes() == 400


def test_derived_entry_shares_weights_and_goes_with_parent():
    cache = ModelCache(budget_bytes=10_000)
    calls = []
    derive = lambda base: FakePipe(0, shared=base.components["unet"])  # noqa: E731
    with cache.use(("m", "img2img"), loader_for(100, calls), parent=("m", "txt2img"), derive=derive) as img2img:
        assert ("m", "txt2img") in cache
    with cache.use(("m", "txt2img"), loader_for(100, calls)) as base:
        assert base.components["unet"] is img2img.components["unet"]
    entries = {e["kind"]: e for e in cache.stats().entries}
    assert entries["img2img"]["bytes"] == 0 and entries["txt2img"]["bytes"] == 400
    assert calls == [100]
    assert cache.unload("m") == 2
    assert ("m", "img2img") not in cache and ("m", "txt2img") not in cache


def test_unload_in_use_refuses():
    cache = ModelCache(budget_bytes=10_000)
    with cache.use(("a", "txt2img"), loader_for(10, [])):
        with pytest.raises(RuntimeError, match="in use"):
            cache.unload("a")


def test_concurrent_users_load_once():
    cache = ModelCache(budget_bytes=10_000)
    calls = []

    def slow_load():
        time.sleep(0.2)
        calls.append(1)
        return FakePipe(10)

    def worker():
        with cache.use(("a", "txt2img"), slow_load):
            pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert cache.stats().hits == 3


def test_loader_failure_leaves_cache_intact():
    cache = ModelCache(budget_bytes=10_000)
    with cache.use(("a", "txt2img"), loader_for(10, [])):
        pass

    def broken():
        raise OSError("truncated file")

    with pytest.raises(OSError):
        with cache.use(("bad", "txt2img"), broken):
            pass
    assert ("a", "txt2img") in cache and ("bad", "txt2img") not in cache
