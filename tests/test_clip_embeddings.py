"""CLIP embeddings: stored once per image (float16 parts + a SQLite index, durable, merged, old per-image files taken
in), reused instead of recomputed, near-duplicates found by the LSH index (planted pairs, against the exact answer),
curation grouping images that only their embeddings link, and search by meaning ranked by cosine. A tiny open_clip
model built from a config (random weights, SimpleTokenizer, which ships its vocabulary) stands in for real weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.curation import ann
from studio.curation import embedding_store as es
from studio.curation.embedding_store import EmbeddingStore
from studio.curation.policy import Policy
from studio.curation.semantic import ClipScorer
from studio.curation_service import CurationRequest, _stamp
from studio.errors import ValidationError
from tests.test_curation import add_photos, make_service

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def unit(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(rng, n: int, dim: int, pairs: int, noise: float = 0.2):
    """n unit vectors around a shared direction (as CLIP's crowd into a cone), `pairs` of them near copies."""
    x = 0.6 * unit(rng, 1, dim) + 0.8 * unit(rng, n, dim)
    src = rng.choice(n // 2, pairs, replace=False)
    dst = n // 2 + rng.choice(n - n // 2, pairs, replace=False)
    x[dst] = x[src] + noise * unit(rng, pairs, dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, {(int(a), int(b)) for a, b in zip(src, dst)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """<models>/CLIP/tiny/ with open_clip_config.json and open_clip_model.safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("models")
    folder = root / "CLIP" / "tiny"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(open_clip.CLIP(**TINY).state_dict(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {"size": 32}}))
    return root


# ---------------------------------------------------------------------------------------------- the store
def test_store_keeps_one_unit_row_per_id_and_survives_reopen(tmp_path):
    rng = np.random.default_rng(0)
    store = EmbeddingStore(tmp_path / "e")
    store.put_many(["a", "b"], 3 * unit(rng, 2, 8), ["1", "1"])
    new_b = unit(rng, 1, 8)
    store.put_many(["b", "c"], np.concatenate([new_b, unit(rng, 1, 8)]), ["2", "1"])
    assert store.count() == 3 and store.stamps(["a", "b", "x"]) == {"a": "1", "b": "2"}
    ids, rows = store.get_many(["b", "x", "a"])
    assert ids == ["b", "a"] and rows.dtype == np.float16
    assert np.allclose(rows[0], new_b[0], atol=1e-3) and np.allclose(np.linalg.norm(rows[1]), 1, atol=1e-3)
    with pytest.raises(ValueError, match="width"):
        store.put_many(["d"], unit(rng, 1, 16))
    store.close()

    (tmp_path / "e" / "part-000099.npy").write_bytes(b"a batch killed before it was indexed")
    again = EmbeddingStore(tmp_path / "e")
    assert not (tmp_path / "e" / "part-000099.npy").exists()
    ids, matrix = again.matrix()
    assert sorted(ids) == ["a", "b", "c"] and matrix.shape == (3, 8)


def test_small_parts_merge_and_old_per_image_files_are_taken_in(tmp_path, monkeypatch):
    monkeypatch.setattr(es, "MAX_SMALL", 3)
    rng = np.random.default_rng(1)
    vectors = unit(rng, 6, 8)
    store = EmbeddingStore(tmp_path / "e")
    for k in range(5):
        store.put_many([f"id{k}"], vectors[k:k + 1])
    store.put_many(["id0"], vectors[5:6])  # replaced: its old row is dropped by the merge
    assert len(list((tmp_path / "e").glob("part-*.npy"))) <= 4
    ids, rows = store.get_many([f"id{k}" for k in range(5)])
    assert np.allclose(rows.astype(np.float32), np.concatenate([vectors[5:6], vectors[1:5]]), atol=1e-3)
    store.compact()
    assert len(list((tmp_path / "e").glob("part-*.npy"))) == 1 and store.count() == 5

    old = tmp_path / "old"
    old.mkdir()
    np.save(old / "ff.npy", vectors[0].astype(np.float16))
    np.save(old / "ee.npy", np.ones(4, np.float16))  # another width: dropped
    assert store.import_npy_files(old) == 1 and not list(old.glob("*.npy"))
    assert store.stamps(["ff"]) == {"ff": ""}


def test_top_ranks_every_row_by_cosine(tmp_path):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 300, 16)
    store = EmbeddingStore(tmp_path / "e")
    store.put_many([f"{k:03d}" for k in range(300)], vectors)
    query = unit(rng, 1, 16)[0]
    hits = store.top(query, 10)
    exact = np.argsort(-(vectors @ query))[:10]
    assert [h[0] for h in hits] == [f"{k:03d}" for k in exact]
    assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))


# ---------------------------------------------------------------------------------------------- the ANN index
def test_lsh_finds_the_planted_pairs_and_nothing_false():
    rng = np.random.default_rng(3)
    x, want = planted(rng, 8000, 64, 200)
    exact = {(int(a), int(b)) for a, b, _ in ann.exact_pairs(x, 0.9)}
    assert want <= exact
    found = ann.near_pairs(x.astype(np.float16), 0.9)  # above EXACT_MAX: through the LSH index
    pairs = {(int(a), int(b)) for a, b, _ in found}
    assert pairs <= exact and len(pairs & want) >= 0.95 * len(want)
    assert (found[:, 2] >= 0.9).all()
    index = ann.LshIndex(x)
    hits = index.query(x[[b for _, b in sorted(want)]], 0.9)
    assert len({(int(i), int(j)) for i, j, _ in hits} & {(k, a) for k, (a, _) in enumerate(sorted(want))}) >= 190


def test_exact_between_works_in_blocks():
    rng = np.random.default_rng(4)
    base = unit(rng, 500, 16)
    query = np.concatenate([base[:5], unit(rng, 3, 16)])
    got = ann.exact_between(query, base, 0.999, block=2)
    assert sorted((int(i), int(j)) for i, j, _ in got) == [(k, k) for k in range(5)]


# ---------------------------------------------------------------------------------------------- with a tiny CLIP
def test_embeddings_are_computed_once_and_reused(tmp_path, models):
    scorer = ClipScorer(models, tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    np.save(tmp_path / "cache" / f"{'c' * 32}.npy", np.ones(32, np.float16))  # the former per-image cache
    calls = []
    model = scorer._load()[1]
    encode = model.encode_image
    model.encode_image = lambda pixels: calls.append(len(pixels)) or encode(pixels)
    img = Image.new("RGB", (40, 40), "red")
    items = [("a" * 32, img, "a red square"), ("b" * 32, lambda: img, "")]
    first = scorer.score(items, ["1", "1"])
    assert calls == [2] and "clip_score" in first[0] and "clip_score" not in first[1]
    assert scorer.score(items, ["1", "1"]) == first and calls == [2]   # stored once, reused
    scorer.score(items, ["1", "2"])                                     # b's file changed: b again
    assert calls == [2, 1]
    store = scorer.embeddings()
    assert store.count() == 3 and store.root == tmp_path / "cache" / "tiny"
    assert not list((tmp_path / "cache").glob("*.npy"))


def test_curation_groups_what_only_embeddings_link_and_search_ranks_by_cosine(tmp_path, models):
    service = make_service(tmp_path)
    service.clip = ClipScorer(models, service.data_dir / "cache" / "clip")
    ids = add_photos(service, blur=False)  # astronaut, camera, coffee: far apart by their hashes
    records = {r["id"]: r for r in service.gallery.get_many(ids)}
    rng = np.random.default_rng(5)
    vectors = unit(rng, 3, 32)
    vectors[1] = vectors[0]  # astronaut and camera: the same embedding
    stamps = [_stamp(service.gallery.path_of(records[i])) for i in ids]
    service.clip.embeddings().put_many(ids, vectors, stamps)
    report = service.run(CurationRequest(all=True))
    assert not report.errors
    by_id = {r["id"]: r for r in report.records}
    assert ids[1] in by_id[ids[0]]["near"] and isinstance(by_id[ids[0]]["near"][ids[1]], float)
    assert ids[2] not in by_id[ids[0]]["near"]
    assert sorted(v for v in (by_id[i]["verdict"] for i in ids[:2])) == ["accepted", "duplicate"]
    assert "cosine 1.000" in next(by_id[i]["auto"]["reason"] for i in ids[:2] if by_id[i]["verdict"] == "duplicate")
    _, stored = service.clip.embeddings().get_many(ids)
    assert np.allclose(stored.astype(np.float32), vectors, atol=1e-3)  # reused, not recomputed

    service.apply(Policy(dedup_cosine=1.5))  # embeddings off: the hashes alone keep them apart
    service.run(CurationRequest(all=True))
    assert {service.record(i)["verdict"] for i in ids} == {"accepted"}

    hits = service.semantic_search("a photo of an astronaut", limit=3)
    query = service.clip.encode_text(["a photo of an astronaut"])[0]
    sims = [float(np.float16(v).astype(np.float32) @ query) for v in vectors]
    assert [round(s, 2) for _, _, s in hits] == sorted((round(s, 2) for s in sims), reverse=True)
    assert all(Path(p).exists() for _, p, _ in hits)
    assert len(service.semantic_search("a photo", limit=1)) == 1
    with pytest.raises(ValidationError, match="meaning"):
        service.semantic_search("  ")


def test_search_by_meaning_without_weights_says_where_they_go(tmp_path):
    service = make_service(tmp_path)
    with pytest.raises(ValidationError, match=r"search by meaning needs an open_clip model in .*CLIP/<name>/") as e:
        service.semantic_search("a red car at night")
    assert e.value.field == "meaning"


def test_ties_come_newest_first(tmp_path, models):
    service = make_service(tmp_path)
    service.clip = ClipScorer(models, service.data_dir / "cache" / "clip")
    folder = service.data_dir / "outputs"
    folder.mkdir(parents=True)
    ids = []
    for k in range(3):
        Image.new("RGB", (16, 16), (k, 0, 0)).save(folder / f"{k}.png")
        ids.append(service.gallery.add({"path": f"outputs/{k}.png", "prompt": "", "model": "m",
                                        "created": time.time() - 100 + k}))
    service.clip.embeddings().put_many(ids, np.repeat(unit(np.random.default_rng(6), 1, 32), 3, axis=0))
    assert [r["id"] for r, _, _ in service.semantic_search("anything", 3)] == ids[::-1]


def test_the_gallery_endpoint_reports_the_missing_model(served):
    from gradio_client import Client

    url, _ = served
    with pytest.raises(Exception, match="search by meaning needs an open_clip model"):
        Client(url, verbose=False).predict("a red car at night", api_name="/gallery_search_meaning")
