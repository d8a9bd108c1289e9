"""The SQLite gallery: the store's API, queries over 100,000 synthetic records checked against a plain Python
filter, query syntax and bad input, thumbnails, trash with crash reconciliation, albums, the `using` guard,
migration from TinyDB day shards, statistics, zip export and copies."""

from __future__ import annotations

import json
import threading
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from studio.errors import ValidationError
from studio.gallery_service import GalleryQuery, GalleryService
from studio.infotext import build_infotext, read_png_parameters, save_png_with_infotext
from studio.paths import PathGuard
from studio.stores.gallery_query import validate
from studio.stores.gallery_store import GalleryStore

DAY = 86400
NOW = time.time()
N_BIG = 100_000
WORDS = ("alpha", "beta", "gamma", "delta")


def record(i: int, created: float, prompt: str = "a red circle", **extra) -> dict:
    return {"path": f"outputs/{i}.png", "prompt": f"{prompt} {i}", "model": "m", "created": created,
            "job_id": "job", "params": {"seed": i}, **extra}


# ---------------------------------------------------------------------- the store API (as before the switch)
def test_crud_list_search(tmp_path):
    store = GalleryStore(tmp_path)
    ids = [store.add(record(i, NOW - i, "blue square" if i % 3 else "Red Circle",
                            model="a" if i % 2 else "b", job_id=f"j{i % 4}")) for i in range(40)]
    assert store.count() == 40 and all(len(i) == 32 for i in ids)
    rec = store.get(ids[0])
    assert rec["prompt"] == "Red Circle 0" and rec["negative_prompt"] == "" and rec["params"] == {"seed": 0}
    rec["params"]["seed"] = 99  # returned records are copies
    assert store.get(ids[0])["params"]["seed"] == 0
    page, total = store.list(limit=10)
    assert total == 40 and [r["id"] for r in page] == ids[:10]  # newest first
    assert [r["id"] for r in store.list(offset=35, limit=10)[0]] == ids[35:]
    reds, n_red = store.list(query="red CIRCLE", limit=5, offset=2)
    assert n_red == 14 and [r["id"] for r in reds] == [ids[i] for i in range(0, 40, 3)][2:7]
    assert store.list(query="red", model="a")[1] == len([i for i in range(0, 40, 3) if i % 2])
    assert store.list(query="nothing-like-this")[0:2] == ([], 0)
    assert [r["id"] for r in store.by_job("j1")] == [ids[i] for i in range(1, 40, 4)]
    updated = store.update(ids[5], {"favourite": True, "prompt": "green triangle", "tags": ["x"]})
    assert updated["favourite"] is True and store.get(ids[5])["tags"] == ["x"]
    assert [r["id"] for r in store.list(query="GREEN")[0]] == [ids[5]]
    removed = store.delete(ids[6])
    assert removed["id"] == ids[6] and removed["path"] == "outputs/6.png" and store.get(ids[6]) is None
    assert store.count() == 39 and store.list()[1] == 39
    with pytest.raises(KeyError):
        store.delete(ids[6])
    with pytest.raises(KeyError):
        store.update(uuid.uuid4().hex, {"x": 1})


def test_validation(tmp_path):
    store = GalleryStore(tmp_path)
    with pytest.raises(ValueError):
        store.add({"prompt": "no path"})
    for bad in ("/etc/passwd", "../x.png", "a/../../x.png", "C:/x.png", "a\\b.png", ""):
        with pytest.raises(ValueError):
            store.add({"path": bad, "prompt": "p"})
    for fields in ({"prompt": 3}, {"params": {"x": object()}}, {"created": float("nan")}, {"rating": 6},
                   {"favourite": "yes"}, {"params": {"x": float("inf")}}):
        with pytest.raises(ValueError):
            store.add({"path": "a.png", "prompt": "p", **fields})
    rid = store.add({"path": "a.png", "prompt": "p", "id": "ab" * 16})
    assert rid == "ab" * 16
    with pytest.raises(ValueError):
        store.add({"path": "b.png", "prompt": "p", "id": rid})  # duplicate
    with pytest.raises(ValueError):
        store.add_many([{"path": "c.png", "prompt": "p", "id": "cd" * 16}, {"path": "d.png", "prompt": "p",
                                                                            "id": rid}])
    with pytest.raises(ValueError):
        store.update(rid, {"created": 5.0})
    with pytest.raises(ValueError):
        store.update(rid, {"path": "../../x"})
    assert store.count() == 1 and store.get(rid)["path"] == "a.png" and store.get("cd" * 16) is None


@pytest.mark.parametrize("bad", ["../etc", "x" * 32, "A" * 32, "a" * 31, "a" * 32 + "\n", "", None, 5])
def test_ids_must_be_hex(tmp_path, bad):
    store = GalleryStore(tmp_path)
    calls = [lambda: store.get(bad), lambda: store.update(bad, {}), lambda: store.delete(bad)]
    if bad:  # a falsy id means "generate one"
        calls.append(lambda: store.add({"path": "a.png", "prompt": "p", "id": bad}))
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_bulk_reopen_and_ties(tmp_path):
    store = GalleryStore(tmp_path)
    base = NOW - 40 * DAY
    ids = store.add_many([record(i, base + (i % 30) * DAY, "blue square" if i % 10 else "red circle")
                          for i in range(3000)])  # 100 records share each creation time
    ids += [store.add(record(3000 + i, NOW - i * DAY, "green star")) for i in range(5)]
    first, total = store.list(limit=3005)
    created = [r["created"] for r in first]
    assert total == 3005 and created == sorted(created, reverse=True) and len({r["id"] for r in first}) == 3005
    store.update(ids[7], {"verdict": "accepted"})
    store.delete(ids[8])
    store.close()
    reopened = GalleryStore(tmp_path)
    assert reopened.count() == 3004 and list(tmp_path.iterdir()) != []
    again, _ = reopened.list(limit=3005)
    assert again == [{**r, "verdict": "accepted"} if r["id"] == ids[7] else r for r in first if r["id"] != ids[8]]
    assert reopened.list(query="RED circle")[1] == 300


def test_concurrent_adds_from_threads(tmp_path):
    store = GalleryStore(tmp_path)
    out: list[str] = []

    def worker(k):
        for i in range(8):
            out.append(store.add(record(k * 100 + i, NOW - (i % 2) * DAY)))
            store.list(query="red")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 32 and store.count() == 32
    assert {r["id"] for r in GalleryStore(tmp_path).list(limit=100)[0]} == set(out)


# ---------------------------------------------------------------------- 100,000 records against a reference
def big_record(i: int, start: float) -> dict:
    words = [w for k, w in enumerate(WORDS) if i % (k + 2) == 0]
    prompt = " ".join(words + (["red circle"] if i % 4 == 0 else ["circle red"] if i % 4 == 1 else []))
    return {"id": f"{i:032x}", "path": f"outputs/{i % 50}/{i}.png", "prompt": prompt or "plain",
            "negative_prompt": "blurry" if i % 5 == 0 else "", "model": f"m{i % 7}", "created": start + i * 60,
            "job_id": f"{i // 10:032x}", "source": "schedule" if i % 100 == 0 else "generate",
            "rating": i % 6, "favourite": i % 20 == 0, "verdict": ("", "accepted", "rejected")[i % 3],
            "params": {"sampler": ("Euler a", "DDIM", "UniPC")[i % 3], "width": 512 if i % 4 else 768,
                       "height": 512 if i % 4 else 768, "seed": i, "loras": ["ink"] if i % 10 == 0 else [],
                       "infotext": "x"}}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A gallery of 100,000 records (one a minute), with an album, scores and its Python reference list."""
    data = tmp_path_factory.mktemp("big")
    start = time.time() - N_BIG * 60
    records = [big_record(i, start) for i in range(N_BIG)]
    store = GalleryStore(data / "db", data)
    store.add_many(records)
    gallery = GalleryService(store, data)
    gallery.create_album("best")
    gallery.add_to_album([r["id"] for r in records[::97]], "best")
    gallery.set_curations([(r["id"], r["verdict"], {"aesthetic": (i * 37) % 101 / 10})
                           for i, r in enumerate(records) if i % 2 == 0])
    yield gallery, records
    store.close()


def reference(records: list[dict], keep, key=None, reverse=True) -> list[str]:
    chosen = [r for r in records if keep(r)]
    chosen.sort(key=key or (lambda r: r["created"]), reverse=reverse)
    return [r["id"] for r in chosen]


def words_of(r: dict) -> set[str]:
    return set((r["prompt"] + " " + r["negative_prompt"]).split())


def day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(t))


def score(i: int) -> float | None:
    return (i * 37) % 101 / 10 if i % 2 == 0 else None


def big_cases(records: list[dict]):
    mid = records[N_BIG // 2]["created"]
    d_from, d_to = day(mid), day(mid + 2 * DAY)
    in_days = (lambda r: d_from <= day(r["created"]) <= d_to)
    n = (lambda r: int(r["id"], 16))
    return [
        (GalleryQuery(), lambda r: True, None),
        (GalleryQuery(sort="oldest"), lambda r: True, "oldest"),
        (GalleryQuery(text="alpha"), lambda r: "alpha" in words_of(r), None),
        (GalleryQuery(text="ALPHA gamma"), lambda r: {"alpha", "gamma"} <= words_of(r), None),
        (GalleryQuery(text='"red circle"'), lambda r: "red circle" in r["prompt"], None),
        (GalleryQuery(text='circle -"red circle"'), lambda r: "circle red" in r["prompt"], None),
        (GalleryQuery(text="red -blurry"), lambda r: "red" in words_of(r) and "blurry" not in words_of(r), None),
        (GalleryQuery(text="-alpha -beta"), lambda r: not {"alpha", "beta"} & words_of(r), None),
        (GalleryQuery(text="delta", sort="rating"), lambda r: "delta" in words_of(r), "rating"),
        (GalleryQuery(model="m3", date_from=d_from, date_to=d_to), lambda r: r["model"] == "m3" and in_days(r),
         None),
        (GalleryQuery(sampler="DDIM", size="768x768"),
         lambda r: r["params"]["sampler"] == "DDIM" and r["params"]["width"] == 768, None),
        (GalleryQuery(lora="ink", text="gamma"), lambda r: n(r) % 10 == 0 and "gamma" in words_of(r), None),
        (GalleryQuery(seed=4242), lambda r: n(r) == 4242, None),
        (GalleryQuery(verdict="rejected", favourite=True), lambda r: r["verdict"] == "rejected" and r["favourite"],
         None),
        (GalleryQuery(min_rating=4, favourite=False), lambda r: r["rating"] >= 4 and not r["favourite"], None),
        (GalleryQuery(sort="rating"), lambda r: True, "rating"),
        (GalleryQuery(verdict="accepted", sort="score:aesthetic", score_name="aesthetic", min_score=9.5),
         lambda r: r["verdict"] == "accepted" and (score(n(r)) or -1) >= 9.5, "score"),
        (GalleryQuery(score_name="aesthetic", min_score=10), lambda r: (score(n(r)) or -1) >= 10, None),
        (GalleryQuery(run_id=records[500]["job_id"]), lambda r: n(r) == 500, None),
        (GalleryQuery(job_id=records[123]["job_id"]), lambda r: n(r) // 10 == 12, None),
        (GalleryQuery(album="best", sort="oldest"), lambda r: n(r) % 97 == 0, "oldest"),
        (GalleryQuery(album="best", text="beta"), lambda r: n(r) % 97 == 0 and "beta" in words_of(r), None),
        (GalleryQuery(text="nothinglikethis"), lambda r: False, None),
        (GalleryQuery(trashed=True), lambda r: False, None),
    ]


def test_queries_filters_sorts_and_paging_match_a_plain_filter(big):
    gallery, records = big
    n = (lambda r: int(r["id"], 16))
    sort_keys = {None: None, "oldest": None, "rating": lambda r: (r["rating"], r["created"]),
                 "score": lambda r: (score(n(r)), r["created"])}
    slowest = 0.0
    for q, keep, sort in big_cases(records):
        expected = reference(records, keep, sort_keys[sort], reverse=sort != "oldest")
        exact = gallery.store.search(validate(q), 0, 0)[1]
        assert exact == len(expected), q
        assert gallery.ids_matching(q, limit=300) == expected[:300], q
        t0 = time.perf_counter()
        page = gallery.search(replace(q, page=3, page_size=40))
        slowest = max(slowest, time.perf_counter() - t0)
        assert [r["id"] for r, _ in page.items] == expected[80:120], q
        assert (page.total == len(expected) and not page.capped) or (page.capped and page.total >= 120), q
        assert page.pages == max(1, -(-page.total // 40))
    assert slowest < 2.0  # a loose bound for a busy test machine (the benchmark holds the real target)


def test_facets_and_stats(big):
    gallery, records = big
    facets = gallery.facets()
    assert facets["models"] == [f"m{k}" for k in range(7)] and facets["loras"] == ["ink"]
    assert facets["samplers"] == ["DDIM", "Euler a", "UniPC"] and facets["sizes"] == ["512x512", "768x768"]
    assert facets["verdicts"] == ["accepted", "rejected"] and facets["score_names"] == ["aesthetic"]
    assert facets["albums"] == ["best"] and facets["controlnets"] == []
    stats = gallery.stats()
    assert stats["images"] == N_BIG and sum(n for _, n in stats["per_day"]) == N_BIG
    assert [d for d, _ in stats["per_day"]] == sorted({day(r["created"]) for r in records})
    assert stats["top_models"][0][1] == -(-N_BIG // 7) and stats["top_loras"] == [("ink", N_BIG // 10)]
    assert stats["favourites"] == N_BIG // 20 and stats["favourite_rate"] == pytest.approx(0.05)
    assert {w for w, _ in stats["top_words"]} >= {"alpha", "red", "circle"} and "a" not in dict(stats["top_words"])
    assert len(stats["storage"]) == 50 and stats["trash"] == (0, 0)


@pytest.mark.parametrize("field, value", [
    ("text", "x" * 1001), ("model", 5), ("size", "big"), ("date_from", "2024-13-01"), ("date_to", "yesterday"),
    ("seed", -1), ("seed", "abc"), ("verdict", "keep-ish"), ("score_name", "no spaces"), ("min_score", "high"),
    ("favourite", "yes"), ("min_rating", 6), ("trashed", None), ("sort", "random"), ("sort", "score:"),
    ("page", 0), ("page_size", 501), ("page_size", 0), ("album", "no such album"),
])
def test_bad_query_values_name_the_field(tmp_path, field, value):
    gallery = GalleryService(GalleryStore(tmp_path / "db"), tmp_path)
    with pytest.raises(ValidationError) as err:
        gallery.search(GalleryQuery(**{field: value}))
    assert err.value.field == field


def test_more_bad_input(tmp_path):
    gallery = GalleryService(GalleryStore(tmp_path / "db"), tmp_path)
    with pytest.raises(ValidationError) as err:
        gallery.search(GalleryQuery(date_from="2025-02-02", date_to="2025-02-01"))
    assert err.value.field == "date_from"
    with pytest.raises(ValidationError) as err:
        gallery.search(GalleryQuery(min_score=1))  # which score?
    assert err.value.field == "min_score"
    for call, field in ((lambda: gallery.rate(["ab" * 16], 6), "stars"), (lambda: gallery.rate("ab" * 16, 1), "ids"),
                        (lambda: gallery.set_favourite(["../x"], True), "ids"),
                        (lambda: gallery.set_curation("ab" * 16, "great", {}), "verdict"),
                        (lambda: gallery.set_curation("ab" * 16, "", {"a b": 1}), "scores"),
                        (lambda: gallery.create_album(""), "name"), (lambda: gallery.create_album("x" * 101), "name"),
                        (lambda: gallery.empty_trash(-1), "older_than_days")):
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field
    assert gallery.search(GalleryQuery(text='"" - -- "')).total == 0  # no words: everything (empty gallery)


# ---------------------------------------------------------------------- files: thumbnails, trash, exports
def gallery_with_images(tmp_path: Path, n: int = 4, roots=None) -> tuple[GalleryService, list[str]]:
    data = tmp_path / "data"
    store = GalleryStore(data / "db", data)
    gallery = GalleryService(store, data, PathGuard(roots or [data]))
    ids = []
    for i in range(n):
        rel = f"outputs/2026-01-0{i + 1}/img{i}.png"
        info = build_infotext(f"a red circle {i}", "blurry", {"Steps": 20, "Sampler": "Euler a", "Seed": i,
                                                              "Size": "640x320", "Lora weights": "ink: 0.8",
                                                              "ControlNet 0": "Module: canny, Model: cn-canny"})
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        save_png_with_infotext(Image.new("RGB", (640, 320), (i * 40, 90, 200)), data / rel, info)
        ids.append(gallery.add({"path": rel, "prompt": f"a red circle {i}", "negative_prompt": "blurry",
                                "model": "builtin:shapes", "created": NOW - (n - i) * 60, "source": "schedule",
                                "job_id": "run1", "params": {"infotext": info}}))
    return gallery, ids


def test_generation_records_are_indexed_from_their_infotext(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    facets = gallery.facets()
    assert facets["loras"] == ["ink"] and facets["controlnets"] == ["cn-canny"] and facets["sizes"] == ["640x320"]
    assert facets["samplers"] == ["Euler a"]
    assert gallery.search(GalleryQuery(run_id="run1", controlnet="cn-canny", seed=2)).items[0][0]["id"] == ids[2]
    assert sum(size for _, size in gallery.stats()["storage"]) == sum(
        p.stat().st_size for p in (tmp_path / "data" / "outputs").rglob("*.png"))


def test_thumbnails_are_made_once_and_reused(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    record = gallery.get(ids[0])
    thumb = gallery.thumbnail(record)
    assert thumb == tmp_path / "data" / "cache" / "thumbs" / ids[0][:2] / f"{ids[0]}.webp"
    with Image.open(thumb) as image:
        assert image.format == "WEBP" and image.size == (256, 128)
    mtime = thumb.stat().st_mtime_ns
    time.sleep(0.01)
    assert gallery.thumbnail(record) == thumb and thumb.stat().st_mtime_ns == mtime
    (tmp_path / "data" / record["path"]).unlink()  # a cached thumbnail needs no image file
    assert gallery.thumbnail(record) == thumb
    unreadable = gallery.get(ids[3])
    gallery.path_of(unreadable).write_bytes(b"not a png")
    assert gallery.thumbnail(unreadable) == gallery.path_of(unreadable)  # no thumbnail, nothing raised
    # the background thread fills the rest and flags the missing file instead of retrying it
    gone = gallery.get(ids[1])
    gallery.path_of(gone).unlink()
    gallery.start_thumbnailer(idle_s=0.05)
    try:
        deadline = time.time() + 20
        while gallery.store.thumbnails_due(10) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        gallery.stop_thumbnailer()
    assert all(gallery.thumbnails.path(i).exists() for i in (ids[0], ids[2]))
    assert not gallery.thumbnails.path(ids[1]).exists() and gallery.store.thumbnails_due(10) == []
    assert gallery.thumbnails.path(ids[2]).stat().st_size > 0


def test_trash_restore_and_empty(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    data = tmp_path / "data"
    originals = {i: gallery.path_of(gallery.get(i)) for i in ids}
    assert gallery.trash(ids[:2]) == 2
    for i in ids[:2]:
        record = gallery.get(i)
        assert record["trashed"] > 0 and not originals[i].exists()
        assert gallery.path_of(record) == data / "trash" / record["path"] and gallery.path_of(record).exists()
    assert [r["id"] for r, _ in gallery.search(GalleryQuery()).items] == ids[:1:-1]
    assert [r["id"] for r, _ in gallery.search(GalleryQuery(trashed=True)).items] == [ids[1], ids[0]]
    assert gallery.search(GalleryQuery(trashed=True)).items[0][1] == str(data / "trash" / gallery.get(ids[1])["path"])
    assert gallery.trash(ids[:1]) == 0  # already there
    assert gallery.restore([ids[0]]) == 1 and originals[ids[0]].exists() and not gallery.get(ids[0])["trashed"]
    assert gallery.empty_trash(older_than_days=1) == 0 and gallery.get(ids[1]) is not None
    assert gallery.empty_trash() == 1
    assert gallery.get(ids[1]) is None and not list((data / "trash").rglob("*.png"))
    assert gallery.store.count() == 3
    # trash older than 30 days is purged when the service starts
    gallery.trash([ids[2]])
    gallery.store.update(ids[2], {"trashed": time.time() - 31 * DAY})
    GalleryService(gallery.store, data)
    assert gallery.get(ids[2]) is None and not originals[ids[2]].exists()


class Crash(Exception):
    pass


@pytest.mark.parametrize("op", ["trash", "restore", "purge"])
def test_a_crash_between_file_move_and_record_update_is_reconciled_at_start(tmp_path, monkeypatch, op):
    gallery, ids = gallery_with_images(tmp_path)
    if op != "trash":
        gallery.trash(ids[:2])
    store = gallery.store

    def crash(journal_ids):
        raise Crash("killed between the file move and the record update")

    monkeypatch.setattr(store, "finish_moves", crash)
    call = {"trash": lambda: gallery.trash(ids[:2]), "restore": lambda: gallery.restore(ids[:2]),
            "purge": lambda: gallery.empty_trash()}[op]
    with pytest.raises(Crash):
        call()
    assert len(store.pending_moves()) == 2
    monkeypatch.undo()
    restarted = GalleryService(store, tmp_path / "data")  # start-up reconciles
    assert store.pending_moves() == []
    for i in ids[:2]:
        record = restarted.get(i)
        if op == "purge":
            assert record is None
        else:
            assert bool(record["trashed"]) == (op == "trash") and restarted.path_of(record).exists()
    files = {p.name for p in (tmp_path / "data").rglob("img*.png")}
    assert files == ({"img2.png", "img3.png"} if op == "purge" else {f"img{k}.png" for k in range(4)})


def test_a_crash_before_the_file_moved_rolls_back(tmp_path, monkeypatch):
    gallery, ids = gallery_with_images(tmp_path)
    monkeypatch.setattr("studio.gallery_trash._move", lambda src, dst: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        gallery.trash([ids[0]])
    monkeypatch.undo()
    assert GalleryService(gallery.store, tmp_path / "data").reconcile() == {"finished": 0, "rolled_back": 0,
                                                                            "missing": 0}
    record = gallery.get(ids[0])
    assert not record["trashed"] and gallery.path_of(record).exists() and gallery.store.pending_moves() == []


def test_a_file_lost_during_a_move_flags_its_record(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    record = gallery.get(ids[0])
    gallery.store.begin_moves("trash", [(ids[0], record["path"], f"trash/{record['path']}")])
    gallery.path_of(record).unlink()
    assert gallery.reconcile() == {"finished": 1, "rolled_back": 0, "missing": 1}
    assert gallery.store._read("SELECT missing FROM images WHERE id = ?", (ids[0],)) == [(1,)]


def test_images_in_use_cannot_be_trashed(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    with gallery.using([ids[0]]):
        with gallery.using([ids[0]]):
            pass
        with pytest.raises(ValidationError, match="in use by a running job") as err:
            gallery.trash([ids[1], ids[0]])
        assert err.value.field == "ids" and not gallery.get(ids[1])["trashed"]
    assert gallery.trash([ids[0]]) == 1


def test_albums(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    assert gallery.create_album("Best ") == "Best" and gallery.create_album("people") == "people"
    with pytest.raises(ValidationError, match="exists"):
        gallery.create_album("Best")
    assert gallery.add_to_album(ids[:3], "Best") == 3 and gallery.add_to_album(ids[:2], "Best") == 0
    assert gallery.add_to_album([ids[0]], "people") == 1
    assert gallery.store.albums_of(ids[0]) == ["Best", "people"]
    assert gallery.search(GalleryQuery(album="Best")).total == 3
    gallery.rename_album("Best", "Keepers")
    assert gallery.albums() == ["Keepers", "people"] and gallery.search(GalleryQuery(album="Keepers")).total == 3
    assert gallery.remove_from_album([ids[0]], "Keepers") == 1
    with pytest.raises(ValidationError) as err:
        gallery.add_to_album(ids, "nope")
    assert err.value.field == "album"
    gallery.delete_album("Keepers")
    assert gallery.albums() == ["people"] and gallery.store.count() == 4
    assert all(gallery.path_of(gallery.get(i)).exists() for i in ids)  # files never move


def test_ratings_favourites_and_curation(tmp_path):
    gallery, ids = gallery_with_images(tmp_path)
    assert gallery.rate(ids[:2], 5) == 2 and gallery.set_favourite([ids[3]], True) == 1
    assert gallery.get(ids[0])["rating"] == 5 and gallery.get(ids[3])["favourite"] is True
    gallery.set_curation(ids[1], "featured", {"aesthetic": 7.5, "sharpness": float("nan"), "clip_score": None})
    gallery.set_curation(uuid.uuid4().hex, "accepted", {"aesthetic": 1})  # not a gallery image: ignored
    assert [r["id"] for r, _ in gallery.search(GalleryQuery(verdict="featured")).items] == [ids[1]]
    assert gallery.search(GalleryQuery(sort="score:aesthetic")).total == 1
    assert gallery.facets()["score_names"] == ["aesthetic"]
    assert [r["id"] for r, _ in gallery.search(GalleryQuery(sort="rating")).items][:2] == [ids[1], ids[0]]


def test_export_zip_and_copy_to_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    gallery, ids = gallery_with_images(tmp_path, roots=[tmp_path / "data", allowed])
    archive = gallery.export_zip(ids[:3])
    assert archive.parent == tmp_path / "data" / "exports" and archive.suffix == ".zip"
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert names == ["img0.png", "img1.png", "img2.png", "metadata.jsonl"]
        z.extract("img1.png", tmp_path / "x")
        lines = [json.loads(line) for line in z.read("metadata.jsonl").decode().splitlines()]
    assert read_png_parameters(tmp_path / "x" / "img1.png").startswith("a red circle 1")
    assert {line["id"] for line in lines} == set(ids[:3])
    assert gallery.copy_to_folder(ids[:2], str(allowed)) == 2
    assert gallery.copy_to_folder(ids[:1], str(allowed)) == 1  # never overwrites
    assert sorted(p.name for p in allowed.iterdir()) == ["img0-2.png", "img0.png", "img1.png"]
    for bad in (str(outside), str(allowed / ".." / "outside"), "/etc", ""):
        with pytest.raises(ValidationError) as err:
            gallery.copy_to_folder(ids[:1], bad)
        assert err.value.field == "folder"
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------------- migration
def write_shards(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True)
    by_day: dict[str, dict] = {}
    for n, r in enumerate(records):
        by_day.setdefault(day(r["created"]), {})[str(n + 1)] = r
    for name, docs in by_day.items():
        (folder / f"{name}.json").write_text(json.dumps({"_default": docs}))


def test_migration_from_tinydb_shards(tmp_path):
    db = tmp_path / "db"
    records = [{"id": uuid.uuid4().hex, **record(i, NOW - i * DAY / 2, model=f"m{i % 2}", verdict="keep")}
               for i in range(10)]
    records.append({"path": "../bad.png", "prompt": "skipped", "id": uuid.uuid4().hex, "created": NOW})
    write_shards(db / "gallery", records)
    torn = sorted((db / "gallery").glob("*.json"))[0]
    (torn.parent / f"{torn.name}.bak").write_text(torn.read_text())
    torn.write_text(torn.read_text()[:20])  # torn: its .bak is read instead
    store = GalleryStore(db)
    assert store.count() == 10 and not (db / "gallery").exists() and (db / "gallery.migrated").is_dir()
    for r in records[:10]:
        assert store.get(r["id"])["prompt"] == r["prompt"] and store.get(r["id"])["verdict"] == "keep"
    assert [r["id"] for r in store.list(limit=3)[0]] == [r["id"] for r in records[:3]]
    assert store.list(query="circle", model="m1")[1] == 5
    store.close()
    # a stop between the commit and the rename: the next start skips what is there
    (db / "gallery.migrated").rename(db / "gallery")
    assert GalleryStore(db).count() == 10 and (db / "gallery.migrated").is_dir() and not (db / "gallery").exists()


def test_curate_verdicts_reach_the_gallery_filters(tmp_path):
    from studio.curation_service import CurationService
    from studio.stores.atomic_storage import JsonStore
    from studio.stores.curation_store import CurationStore

    gallery, ids = gallery_with_images(tmp_path)
    data = tmp_path / "data"
    curation = CurationService(CurationStore(data / "db"), gallery, data, PathGuard([data]), tmp_path / "models",
                               JsonStore(data / "db" / "curation_settings.json"), workers=0)
    curation.override(ids[2], "rejected", "me")
    assert [r["id"] for r, _ in gallery.search(GalleryQuery(verdict="rejected")).items] == [ids[2]]
    curation.override(ids[2], "featured", "me")
    assert gallery.search(GalleryQuery(verdict="rejected")).total == 0
    assert gallery.facets()["verdicts"] == ["featured"]
