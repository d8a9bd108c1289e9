"""Stores on real files: recovery from corruption, kill -9 during writes (the gallery's other tests are in
test_gallery_store.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinydb import Query

from studio.stores.atomic_storage import AtomicJSONStorage, JsonStore, open_db
from studio.stores.gallery_store import GalleryStore

ROOT = Path(__file__).resolve().parent.parent


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
