"""Stores on real files: gallery sharding and search, recovery from corruption, kill -9 during writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from tinydb import Query

from studio.stores.atomic_storage import AtomicJSONStorage, JsonStore, open_db
from studio.stores.gallery_store import GalleryStore

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400
NOW = time.time()


def record(i: int, created: float, prompt: str = "a red circle", **extra) -> dict:
    return {"path": f"outputs/{i}.png", "prompt": f"{prompt} {i}", "model": "m", "created": created,
            "job_id": "job", "params": {"seed": i}, **extra}


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
    page2, _ = store.list(offset=35, limit=10)
    assert [r["id"] for r in page2] == ids[35:]
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
    with pytest.raises(ValueError):
        store.add({"path": "a.png", "prompt": 3})
    with pytest.raises(ValueError):
        store.add({"path": "a.png", "prompt": "p", "params": {"x": object()}})
    with pytest.raises(ValueError):
        store.add({"path": "a.png", "prompt": "p", "created": float("nan")})
    rid = store.add({"path": "a.png", "prompt": "p", "id": "ab" * 16})
    assert rid == "ab" * 16
    with pytest.raises(ValueError):
        store.add({"path": "b.png", "prompt": "p", "id": rid})  # duplicate
    with pytest.raises(ValueError):
        store.update(rid, {"created": 5.0})  # would change the shard
    with pytest.raises(ValueError):
        store.update(rid, {"path": "../../x"})
    assert store.count() == 1 and store.get(rid)["path"] == "a.png"


@pytest.mark.parametrize("bad", ["../etc", "x" * 32, "A" * 32, "a" * 31, "a" * 32 + "\n", "", None, 5])
def test_ids_must_be_hex(tmp_path, bad):
    store = GalleryStore(tmp_path)
    calls = [lambda: store.get(bad), lambda: store.update(bad, {}), lambda: store.delete(bad)]
    if bad:  # a falsy id means "generate one"
        calls.append(lambda: store.add({"path": "a.png", "prompt": "p", "id": bad}))
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_sharding_by_day_and_reopen(tmp_path):
    store = GalleryStore(tmp_path)
    base = NOW - 40 * DAY
    bulk = [record(i, base + (i % 30) * DAY + i, "blue square" if i % 10 else "red circle")
            for i in range(3000)]
    ids = store.add_many(bulk)
    ids += [store.add(record(3000 + i, NOW - i * DAY, "green star")) for i in range(5)]
    shards = sorted(p.name for p in (tmp_path / "gallery").glob("*.json"))
    expected_days = {GalleryStore.shard_name(r["created"]) for r in bulk} | {
        GalleryStore.shard_name(NOW - i * DAY) for i in range(5)}
    assert shards == sorted(f"{d}.json" for d in expected_days) and len(shards) >= 35
    for shard in (tmp_path / "gallery").glob("*.json"):  # each record sits in its own day's file
        docs = json.loads(shard.read_text())["_default"].values()
        assert {GalleryStore.shard_name(d["created"]) for d in docs} == {shard.stem}
    first, total = store.list(limit=3005)
    created = [r["created"] for r in first]
    assert total == 3005 and created == sorted(created, reverse=True)
    store.update(ids[7], {"verdict": "keep"})
    store.delete(ids[8])
    store.close()

    reopened = GalleryStore(tmp_path)
    assert reopened.count() == 3004
    again, _ = reopened.list(limit=3005)
    assert again == [{**r, "verdict": "keep"} if r["id"] == ids[7] else r for r in first if r["id"] != ids[8]]
    assert reopened.get(ids[7])["verdict"] == "keep" and reopened.get(ids[8]) is None
    assert reopened.list(query="RED circle")[1] == 300
    assert len(reopened.add(record(9999, NOW))) == 32 and reopened.count() == 3005


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


def test_json_store_api(tmp_path):
    store = JsonStore(tmp_path / "presets.json")
    store.insert({"name": "a", "params": {"lr": 1}})
    store.insert({"name": "b", "params": {"lr": 2}, "step": 5})
    assert store.get("name", "b")["params"] == {"lr": 2} and store.get("name", "zz") is None
    assert [d["name"] for d in store.search(Query().step > 1)] == ["b"]
    assert store.update("name", "a", {"params": {"lr": 3}}) == 1
    assert store.update(Query().step == 5, {"x": 1}) == 1
    store.upsert("name", "c", {"name": "c"})
    store.upsert("name", "c", {"name": "c", "v": 2})
    assert store.remove("name", "b") == 1 and store.remove_where("name", "b") == 0
    got = store.all()
    got[0]["params"]["lr"] = 100  # copies
    assert JsonStore(tmp_path / "presets.json").all() == store.all() == [
        {"name": "a", "params": {"lr": 3}}, {"name": "c", "v": 2}]
    with pytest.raises(TypeError):
        store.insert({"bad": object()})  # a failed write leaves memory and disk as they were
    assert store.all() == JsonStore(tmp_path / "presets.json").all() and len(store.all()) == 2
    with store.locked() as db:
        db.truncate()
    assert store.all() == []


def test_backup_keeps_previous_version(tmp_path):
    db = open_db(tmp_path / "s.json")
    db.insert({"v": 1})
    db.insert({"v": 2})
    assert [d["v"] for d in json.loads((tmp_path / "s.json.bak").read_text())["_default"].values()] == [1]
    assert not list(tmp_path.glob(".*tmp"))


TORN = '{"_default": {"1": {"id": "a"}, "2": {"id"'


@pytest.mark.parametrize("damage", [TORN, "", "\x00\x00\x00", "[1, 2]"])
def test_corrupt_file_recovers_from_backup(tmp_path, damage, caplog):
    store = JsonStore(tmp_path / "runs.json")
    store.insert({"id": "a"})
    store.insert({"id": "b"})
    (tmp_path / "runs.json").write_text(damage)  # torn / truncated / garbage
    recovered = JsonStore(tmp_path / "runs.json")
    assert [d["id"] for d in recovered.all()] == ["a"]  # the backup holds everything before the last write
    aside = list(tmp_path.glob("runs.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == damage
    assert "corrupt" in caplog.text
    recovered.insert({"id": "c"})
    assert [d["id"] for d in JsonStore(tmp_path / "runs.json").all()] == ["a", "c"]


def test_corrupt_without_backup_starts_empty(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    assert AtomicJSONStorage(tmp_path / "x.json").read() is None
    assert len(list(tmp_path.glob("x.json.corrupt-*"))) == 1 and not (tmp_path / "x.json").exists()
    (tmp_path / "y.json").write_text("{")
    (tmp_path / "y.json.bak").write_text("{also bad")
    store = JsonStore(tmp_path / "y.json")
    assert store.all() == [] and len(list(tmp_path.glob("y.json*.corrupt-*"))) == 2


def test_corrupt_gallery_shard_recovers(tmp_path):
    noon = time.mktime(time.localtime()[:3] + (12, 0, 0, 0, 0, -1))
    store = GalleryStore(tmp_path)
    a = store.add(record(1, noon))
    b = store.add(record(2, noon + 1))
    other = store.add(record(3, noon - DAY))
    shard = tmp_path / "gallery" / f"{GalleryStore.shard_name(noon)}.json"
    shard.write_bytes(shard.read_bytes()[:40])  # torn
    reopened = GalleryStore(tmp_path)
    # the day's .bak holds everything before its last write; other days are untouched
    assert reopened.get(a)["prompt"] == "a red circle 1" and reopened.get(b) is None
    assert reopened.get(other)["prompt"] == "a red circle 3"
    assert len(list((tmp_path / "gallery").glob(f"{shard.name}.corrupt-*"))) == 1
    assert len(reopened.add(record(4, noon))) == 32 and GalleryStore(tmp_path).count() == 3


KILL_LOOP = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
{setup}
i = 0
while True:
    {insert}
    print(ack, flush=True)
    i += 1
"""

SETUPS = {
    "gallery": ("from studio.stores.gallery_store import GalleryStore\nstore = GalleryStore(Path({path!r}))",
                "ack = store.add({{'path': f'o/{{i}}.png', 'prompt': f'p {{i}}', "
                "'params': {{'blob': 'x' * 20000}}, 'created': time.time() - (i % 3) * 86400}})"),
    "json": ("from studio.stores.atomic_storage import JsonStore\n"
             "store = JsonStore(Path({path!r}) / 'runs.json')",
             "store.insert({{'id': i, 'blob': 'x' * 20000}}); ack = str(i)"),
}


@pytest.mark.parametrize("kind", ["gallery", "json"])
@pytest.mark.parametrize("after, delay", [(3, 0.0), (25, 0.004), (60, 0.011)])
def test_kill_during_writes_loses_no_acknowledged_record(tmp_path, kind, after, delay):
    """SIGKILL a writer at different moments (serialising, writing the temp file, replacing)."""
    setup, insert = SETUPS[kind]
    script = KILL_LOOP.format(root=str(ROOT), setup=setup.format(path=str(tmp_path)), insert=insert.format())
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=err, text=True)
    acked = []
    try:
        while len(acked) < after:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the child is busy writing the next record
        proc.wait()
        proc.stdout.close()
    assert len(acked) == after, (tmp_path / "stderr.txt").read_text()
    if kind == "gallery":
        store = GalleryStore(tmp_path)
        assert all(store.get(a)["prompt"] == f"p {i}" for i, a in enumerate(acked)) and store.count() >= after
    else:
        ids = {str(d["id"]) for d in JsonStore(tmp_path / "runs.json").all()}
        assert set(acked) <= ids
    for leftover in list(tmp_path.rglob("*.json")) + list(tmp_path.rglob("*.json.bak")):
        json.loads(leftover.read_text())  # every file on disk is whole
    assert not list(tmp_path.rglob("*.corrupt-*"))
    assert not list(tmp_path.rglob(".*.json.tmp"))  # a temp file left by the kill is cleaned up at open
