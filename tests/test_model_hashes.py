"""The model hash as A1111 computes it (AutoV2: first 10 hex digits of the file's SHA-256), computed once per
file version: cached by size + mtime in the data dir, reused after a restart, recomputed when the file changes."""

from __future__ import annotations

import hashlib
import json
import os

from pipelines.model_hashes import HashCache


def test_hash_is_reused_after_restart_and_recomputed_when_the_file_changes(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 1000)
    cache_file = tmp_path / "data" / "cache" / "model_hashes.json"
    first = HashCache(cache_file)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert first.autov2(weights) == expected[:10] and first.sha256(weights) == expected
    assert first.computed == 1  # the second call was a cache hit
    saved = json.loads(cache_file.read_text())["files"][str(weights.resolve())]
    assert saved == {"size": 7000, "mtime_ns": os.stat(weights).st_mtime_ns, "sha256": expected}
    assert not [p for p in cache_file.parent.iterdir() if p.name != cache_file.name]  # no temp files left

    restarted = HashCache(cache_file)
    assert restarted.autov2(weights) == expected[:10] and restarted.computed == 0

    weights.write_bytes(b"other weights" * 1000)
    changed = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert restarted.autov2(weights) == changed[:10] and restarted.computed == 1
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size and bytes, newer mtime
    assert HashCache(cache_file).autov2(weights) == changed[:10]
    assert json.loads(cache_file.read_text())["files"][str(weights.resolve())]["mtime_ns"] == stat.st_mtime_ns \
        + 1_000_000


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    cache_file = tmp_path / "model_hashes.json"
    cache_file.write_text("{not json")
    cache = HashCache(cache_file)
    assert cache.autov2(weights) == hashlib.sha256(b"x").hexdigest()[:10]
    assert json.loads(cache_file.read_text())["version"] == 1


def test_the_studio_hashes_a_model_once_into_the_data_dir(services, tiny_models_dir):
    unet = tiny_models_dir / "Stable-diffusion" / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors"
    expected = hashlib.sha256(unet.read_bytes()).hexdigest()[:10]
    assert services.models.model_hash("local:tiny-sd") == expected
    assert services.models.model_hash("local:tiny-sd") == expected and services.models.hashes.computed == 1
    cache_file = services.settings.data_dir / "cache" / "model_hashes.json"
    assert str(unet.resolve()) in json.loads(cache_file.read_text())["files"]
