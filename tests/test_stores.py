"""Stores on real files: gallery sharding and search, recovery from corruption, kill -9 during writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.stores.atomic_storage import JsonStore
from studio.stores.gallery_store import GalleryStore

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def record(i: int, created: float, prompt: str = "a red circle") -> dict:
    return {"path": f"outputs/{i}.png", "prompt": f"{prompt} {i}", "model": "m", "created": created,
            "job_id": "job", "params": {"seed": i}}


def test_crud_list_search_and_reopen(tmp_path):
    store = GalleryStore(tmp_path)
    now = time.time()
    ids = [store.add(record(i, now - (i % 30) * DAY, "blue square" if i % 3 else "red circle")) for i in range(300)]
    assert len(list((tmp_path / "gallery").glob("*.json"))) == 30
    page, total = store.list(limit=10)
    assert total == 300 and [r["created"] for r in page] == sorted((r["created"] for r in page), reverse=True)
    _, reds = store.list(query="RED circle")
    assert reds == 100
    store.update(ids[5], {"favourite": True, "prompt": "green triangle"})
    assert store.get(ids[5])["favourite"] is True and store.list(query="green")[1] == 1
    removed = store.delete(ids[6])
    assert removed["id"] == ids[6] and store.get(ids[6]) is None
    reopened = GalleryStore(tmp_path)
    assert reopened.count() == 299 and reopened.get(ids[5])["favourite"] is True
    assert len(reopened.by_job("job")) == 299


@pytest.mark.parametrize("bad", ["../etc", "x" * 32, "", None])
def test_ids_must_be_hex(tmp_path, bad):
    store = GalleryStore(tmp_path)
    with pytest.raises(ValueError):
        store.get(bad)


def test_corrupt_file_recovers_from_backup(tmp_path):
    store = JsonStore(tmp_path / "runs.json")
    store.insert({"id": "a"})
    store.insert({"id": "b"})
    (tmp_path / "runs.json").write_text('{"_default": {"1": {"id": "a"}, "2": {"id"')  # torn write
    recovered = JsonStore(tmp_path / "runs.json")
    assert [d["id"] for d in recovered.all()] == ["a"]  # the backup holds everything before the last write
    assert list(tmp_path.glob("runs.json.corrupt-*"))


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
                "ack = store.add({{'path': f'o/{{i}}.png', 'prompt': f'p {{i}}', 'created': time.time() - (i % 3) * 86400}})"),
    "json": ("from studio.stores.atomic_storage import JsonStore\nstore = JsonStore(Path({path!r}) / 'runs.json')",
             "store.insert({{'id': i}}); ack = i"),
}


@pytest.mark.parametrize("kind", ["gallery", "json"])
@pytest.mark.parametrize("after", [5, 40, 120])
def test_kill_during_writes_loses_no_acknowledged_record(tmp_path, kind, after):
    setup, insert = SETUPS[kind]
    script = KILL_LOOP.format(root=str(ROOT), setup=setup.format(path=str(tmp_path)), insert=insert.format())
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < after:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) == after
    if kind == "gallery":
        store = GalleryStore(tmp_path)
        assert all(store.get(a) is not None for a in acked)
    else:
        ids = {str(d["id"]) for d in JsonStore(tmp_path / "runs.json").all()}
        assert set(acked) <= ids
    for leftover in tmp_path.rglob("*.json"):
        json.loads(leftover.read_text())  # every file on disk is whole
