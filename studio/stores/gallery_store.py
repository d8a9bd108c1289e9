"""Gallery records in one SQLite database (`<db>/gallery.sqlite3`, WAL, FTS5 over the prompts).

The gallery's single source of truth. Every write is one transaction, fsynced when the call returns; each
thread reads through its own connection and writes go through one lock. At first open a data dir that still has
the TinyDB day shards of earlier versions (`<db>/gallery/*.json`) is migrated once (studio.stores.gallery_migration).
Schema: studio.stores.gallery_schema; records: studio.stores.gallery_record; queries: studio.stores.gallery_query.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from studio.stores import gallery_schema
from studio.stores.gallery_query import (FTS, FTS_IN_FILTER, IMAGES, GalleryQuery, compile_query, filter_sizes,
                                         fts_match, has_filters)
from studio.stores.gallery_record import (INSERT_SQL, INSERT_TEXT_SQL, RECORD_JOIN, SELECT_COLUMNS, check_id,
                                          facet_deltas, from_row, normalise, to_rows, validate)
from studio.stores.gallery_schema import FACET_COLUMNS, UPSERT

DB_NAME = "gallery.sqlite3"
CHUNK = 500  # ids per `IN (...)` list
RECORDS = f"SELECT {SELECT_COLUMNS} FROM images i {RECORD_JOIN}"
RARE_TEXT = 2000         # a text matching fewer images than this is searched from the FTS5 side
FEW_FILTERED = 1000      # filters picking fewer images than this: each is tested against the text
SMALL_FILTER = 30_000    # ... fewer than this: the text's matches are tested against them as a set
COUNT_BUDGET_S = 0.03    # counting a page's total stops after this long (the total is then a lower bound)
FLAG_COLUMNS = {"rating", "favourite", "verdict", "missing", "thumb"}


def seq_of_time(created: float) -> int:
    """The ordering key of a record created at `created` (microseconds; ties are bumped by one)."""
    return int(round(created * 1_000_000))


def _chunks(items: list, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class GalleryStore:
    """Thread-safe image records under `root` (the data dir's db folder): add, get, update, delete, search.

    `data_dir`, when given, is where record paths point: an added image's file size is recorded (storage
    statistics). Use one instance per root.
    """

    def __init__(self, root: Path, data_dir: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / DB_NAME
        self.data_dir = Path(data_dir) if data_dir else None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()   # the connection list
        self._write = threading.RLock()  # one writer at a time (SQLite's own lock would make others wait anyway)
        gallery_schema.create(self._conn())
        from studio.stores.gallery_migration import migrate_tinydb_shards

        migrate_tinydb_shards(self, self.root / "gallery")

    # ------------------------------------------------------------------ connections and transactions
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = gallery_schema.connect(self.path)
            with self._guard:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self):
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception); yields the connection."""
        with self._write:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _read(self, sql: str, params=()) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every connection (everything is already on disk)."""
        with self._guard:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------ writes
    def _size_of(self, path: str) -> int:
        if self.data_dir is None:
            return 0
        try:
            return (self.data_dir / path).stat().st_size
        except OSError:
            return 0

    def _free_seqs(self, conn, wanted: list[int]) -> list[int]:
        """Unique, unused ordering keys as near as possible above each wanted one (ties bumped by one)."""
        taken: set[int] = set()
        for chunk in _chunks(sorted(set(wanted))):
            taken.update(s for (s,) in conn.execute(f"SELECT seq FROM images WHERE seq IN ({_marks(len(chunk))})",
                                                    chunk))
        known = set(wanted)  # whether these are taken is known; a bumped key must be looked up
        out = []
        for seq in wanted:
            while seq in taken or (seq not in known
                                   and conn.execute("SELECT 1 FROM images WHERE seq = ?", (seq,)).fetchone()):
                seq += 1
            taken.add(seq)
            out.append(seq)
        return out

    def _insert(self, conn, records: list[dict]) -> None:
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate image id in one insert")
        for chunk in _chunks(ids):
            clash = conn.execute(f"SELECT id FROM images WHERE id IN ({_marks(len(chunk))})", chunk).fetchone()
            if clash:
                raise ValueError(f"image id {clash[0]} already exists")
        seqs = self._free_seqs(conn, [seq_of_time(r["created"]) for r in records])
        rows, texts, tags = [], [], []
        for record, seq in zip(records, seqs):
            row, text, record_tags = to_rows(record, seq, self._size_of(record["path"]))
            rows.append(row)
            texts.append(text)
            tags += record_tags
        conn.executemany(INSERT_SQL, rows)
        conn.executemany(INSERT_TEXT_SQL, texts)
        conn.execute("INSERT INTO images_fts(rowid, prompt, negative_prompt) SELECT seq, prompt, negative_prompt "
                     "FROM image_text WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))
        conn.executemany(f"INSERT INTO facet_counts(kind, value, n, bytes) VALUES (?, ?, ?, ?) {UPSERT}",
                         facet_deltas(rows, FACET_COLUMNS))
        conn.executemany("INSERT OR IGNORE INTO image_tags(kind, value, image) VALUES (?, ?, ?)", tags)

    def add(self, record: dict) -> str:
        """Validate and insert one record (an id is generated if absent); durable when this returns."""
        record = normalise(record)
        with self.transaction() as conn:
            self._insert(conn, [record])
        return record["id"]

    def add_many(self, records: list[dict]) -> list[str]:
        """Bulk insert in one transaction (imports, migration, benchmarks); ids in input order. Inserting in
        creation order keeps the database's pages in date order."""
        normalised = [normalise(r) for r in records]
        with self.transaction() as conn:
            self._insert(conn, normalised)
        return [r["id"] for r in normalised]

    def optimize(self) -> None:
        """Merge the FTS5 index into one segment (after a bulk insert: searches get faster)."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO images_fts(images_fts) VALUES ('optimize')")

    def _seq(self, conn, record_id: str) -> int:
        row = conn.execute("SELECT seq FROM images WHERE id = ?", (check_id(record_id),)).fetchone()
        if row is None:
            raise KeyError(f"no image with id {record_id}")
        return row[0]

    def update(self, record_id: str, fields: dict) -> dict:
        """Set `fields` (verdicts, tags, favourite...) on a record; returns the updated record.

        `id` and `created` cannot change (they fix its place); KeyError if there is no such record.
        """
        fields = validate(dict(fields))
        with self.transaction() as conn:
            seq = self._seq(conn, record_id)
            current = self._get(conn, record_id)
            for key in ("id", "created"):
                if key in fields and fields[key] != current.get(key):
                    raise ValueError(f"gallery field {key!r} cannot change")
            record = {**current, **fields}
            row, text, tags = to_rows(record, seq, self._size_of(record["path"]))
            conn.execute("UPDATE images SET path = ?, folder = ?, bytes = ?, model = ?, job_id = ?, run_id = ?, "
                         "source = ?, sampler = ?, size = ?, seed = ?, rating = ?, favourite = ?, verdict = ?, "
                         "trashed = ? WHERE seq = ?", row[4:] + (seq,))
            conn.execute("UPDATE image_text SET prompt = ?, negative_prompt = ?, extra = ? WHERE seq = ?",
                         text[1:] + (seq,))
            conn.execute("DELETE FROM image_tags WHERE image = ?", (seq,))
            conn.executemany("INSERT OR IGNORE INTO image_tags(kind, value, image) VALUES (?, ?, ?)", tags)
            return self._get(conn, record_id)

    def delete(self, record_id: str) -> dict:
        """Remove a record and return it (its file is the caller's business). KeyError if absent."""
        with self.transaction() as conn:
            self._seq(conn, record_id)
            record = self._get(conn, record_id)
            conn.execute("DELETE FROM images WHERE id = ?", (record_id,))
            return record

    def set_flags(self, ids: list[str], **values) -> int:
        """Set rating / favourite / verdict / missing / thumb on many records in one transaction; returns how many
        records exist among `ids`."""
        unknown = set(values) - FLAG_COLUMNS
        if unknown:
            raise ValueError(f"not a flag column: {', '.join(sorted(unknown))}")
        ids = [check_id(i) for i in ids]
        assignments = ", ".join(f"{k} = ?" for k in values)
        changed = 0
        with self.transaction() as conn:
            for chunk in _chunks(ids):
                changed += conn.execute(f"UPDATE images SET {assignments} WHERE id IN ({_marks(len(chunk))})",
                                        [*values.values(), *chunk]).rowcount
        return changed

    def set_curation(self, items: list[tuple[str, str, dict[str, float]]]) -> None:
        """Record Curate's verdict and scores of each (id, verdict, {score name: value}); ids not in the gallery
        (folder images) are skipped. Earlier scores of the same names are replaced."""
        with self.transaction() as conn:
            conn.executemany("UPDATE images SET verdict = ? WHERE id = ?",
                             [(verdict or "", check_id(record_id)) for record_id, verdict, _ in items])
            conn.executemany("INSERT INTO scores(image, name, value) SELECT seq, ?, ? FROM images WHERE id = ? "
                             "ON CONFLICT(image, name) DO UPDATE SET value = excluded.value",
                             [(name, float(v), record_id) for record_id, _, scores in items
                              for name, v in scores.items()])

    # ------------------------------------------------------------------ reads
    def _get(self, conn, record_id: str) -> dict | None:
        row = conn.execute(f"{RECORDS} WHERE i.id = ?", (record_id,)).fetchone()
        return from_row(row) if row else None

    def get(self, record_id: str) -> dict | None:
        """The record with this id, or None. ValueError if the id is malformed."""
        return self._get(self._conn(), check_id(record_id))

    def get_many(self, ids: list[str]) -> list[dict]:
        """The records of `ids` that exist, in the order given."""
        found: dict[str, dict] = {}
        for chunk in _chunks([check_id(i) for i in ids]):
            for row in self._read(f"{RECORDS} WHERE i.id IN ({_marks(len(chunk))})",
                                  chunk):
                found[row[0]] = from_row(row)
        return [found[i] for i in ids if i in found]

    def count(self) -> int:
        """How many records the gallery holds (the trash included)."""
        return self._read("SELECT count(*) FROM images")[0][0]

    def _count_to(self, conn, frm: str, where: str, params: list, n: int) -> int:
        """Matches of a query, counted up to `n`."""
        return conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {frm} WHERE {where} LIMIT ?)",
                            [*params, n]).fetchone()[0]

    def _plan(self, conn, q: GalleryQuery) -> str:
        """How to run a search with words (see gallery_query.PLANS), from at most two bounded counts (a few ms
        each). Few text matches: they drive. Else, when one filter picks under SMALL_FILTER images: if all the
        filters together pick a handful (estimated as if independent), those images drive and each is tested
        against the FTS5 index (~30 us a test), else the matches drive, tested against the filters' set. Filters
        picking many or none: by date the matches drive (and stop at a full page), by rating or score the images
        drive in that order (most rows pass the text test)."""
        match = fts_match(q)
        if match is None:
            return IMAGES
        by_date = q.sort in ("newest", "oldest")
        filtered = has_filters(q)
        if by_date and not filtered:
            return FTS
        if self._count_to(conn, "images_fts", "images_fts MATCH ?", [match], RARE_TEXT) < RARE_TEXT:
            return FTS
        if filtered:
            sizes = [self._count_to(conn, frm, where, params, SMALL_FILTER)
                     for frm, where, params in filter_sizes(q, seq_of_time)]
            total = max(1, conn.execute("SELECT coalesce(sum(n), 0) FROM facet_counts WHERE kind = 'day'"
                                        ).fetchone()[0])
            together = total * math.prod(n / total for n in sizes)  # as if the filters were independent
            if min(sizes) < SMALL_FILTER:
                return IMAGES if together < FEW_FILTERED else FTS_IN_FILTER
        return FTS if by_date else IMAGES

    def _compile(self, conn, q: GalleryQuery):
        return compile_query(q, seq_of_time, self._plan(conn, q))

    def _count(self, conn, c, cap: int, budget_s: float) -> int | None:
        """Matches of a compiled query up to `cap` + 1, or None when counting takes longer than `budget_s`."""
        deadline = time.perf_counter() + budget_s
        conn.set_progress_handler(lambda: time.perf_counter() > deadline, 2000)
        try:
            return conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {c.frm} WHERE {c.where} LIMIT ?)",
                                [*c.params, cap + 1]).fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            return None
        finally:
            conn.set_progress_handler(None, 0)

    def search(self, q: GalleryQuery, offset: int, limit: int, count_cap: int | None = None,
               count_budget_s: float = COUNT_BUDGET_S) -> tuple[list[dict], int, bool]:
        """(records, total, capped) for a validated query. Without `count_cap` the total is exact. With it, the
        count stops at `count_cap` matches or after `count_budget_s` seconds; then capped=True and total is a
        lower bound (the matches seen so far: offset + this page, plus one when the page is full)."""
        conn = self._conn()
        c = self._compile(conn, q)
        offset, limit = max(0, int(offset)), max(0, int(limit))
        rows = conn.execute(f"SELECT {SELECT_COLUMNS} FROM {c.frm} {RECORD_JOIN} WHERE {c.where} ORDER BY {c.order} "
                            "LIMIT ? OFFSET ?", [*c.params, limit, offset]).fetchall()
        if count_cap is None:
            total = conn.execute(f"SELECT count(*) FROM {c.frm} WHERE {c.where}", c.params).fetchone()[0]
            return [from_row(r) for r in rows], total, False
        total = self._count(conn, c, count_cap, count_budget_s)
        seen = offset + len(rows) + (len(rows) == limit > 0)
        if total is None or total > count_cap:
            return [from_row(r) for r in rows], max(seen, min(total or 0, count_cap)), True
        return [from_row(r) for r in rows], total, False

    def ids(self, q: GalleryQuery, limit: int) -> list[str]:
        """The ids of the first `limit` matches of a validated query, in its order."""
        conn = self._conn()
        c = self._compile(conn, q)
        return [r[0] for r in conn.execute(f"SELECT i.id FROM {c.frm} WHERE {c.where} ORDER BY {c.order} LIMIT ?",
                                           [*c.params, max(0, int(limit))])]

    def list(self, offset: int = 0, limit: int = 50, query: str | None = None,
             model: str | None = None) -> tuple[list[dict], int]:
        """Newest first, outside the trash; `query`: words / "phrases" / -exclusions over the prompts, `model`:
        exact. Returns (page, total matches)."""
        records, total, _ = self.search(GalleryQuery(text=(query or "").strip(), model=model or ""), offset, limit)
        return records, total

    def by_job(self, job_id: str) -> list[dict]:
        """Every record made by one job, newest first."""
        rows = self._read(f"{RECORDS} WHERE i.job_id = ? ORDER BY i.seq DESC", (job_id,))
        return [from_row(r) for r in rows]

    def facets(self) -> dict[str, list[str]]:
        """The values present of each filterable field (models, samplers, sizes, verdicts, loras, controlnets,
        score names), sorted, and the album names."""
        out: dict[str, list[str]] = {k: [] for k in ("models", "loras", "controlnets", "samplers", "sizes",
                                                     "verdicts", "score_names")}
        plural = {"model": "models", "lora": "loras", "controlnet": "controlnets", "sampler": "samplers",
                  "size": "sizes", "verdict": "verdicts", "score": "score_names"}
        for kind, value in self._read("SELECT kind, value FROM facet_counts WHERE n > 0 AND value != '' "
                                      f"AND kind IN ({_marks(len(plural))}) ORDER BY kind, value", list(plural)):
            out[plural[kind]].append(value)
        out["albums"] = self.albums()
        return out

    def facet_counts(self, kind: str, limit: int | None = None, by_count: bool = True) -> list[tuple[str, int, int]]:
        """(value, images, bytes) of one facet kind (model, lora, day, folder, ...), most used first or by value."""
        order = "n DESC, value" if by_count else "value"
        return self._read(f"SELECT value, n, bytes FROM facet_counts WHERE kind = ? AND n > 0 ORDER BY {order} "
                          "LIMIT ?", (kind, -1 if limit is None else limit))

    def favourite_count(self) -> int:
        return self._read("SELECT count(*) FROM images WHERE favourite = 1")[0][0]

    def trash_usage(self) -> tuple[int, int]:
        """(images, bytes) in the trash."""
        n, size = self._read("SELECT count(*), coalesce(sum(bytes), 0) FROM images WHERE trashed > 0")[0]
        return n, size

    def recent_prompts(self, limit: int) -> list[str]:
        """The prompts of the newest `limit` records (a sample for word statistics)."""
        return [r[0] for r in self._read("SELECT prompt FROM image_text ORDER BY seq DESC LIMIT ?", (limit,))]

    # ------------------------------------------------------------------ albums
    def albums(self) -> list[str]:
        return [r[0] for r in self._read("SELECT name FROM albums ORDER BY name COLLATE NOCASE")]

    def album_counts(self) -> list[tuple[str, int]]:
        return self._read("SELECT a.name, count(ai.image) FROM albums a LEFT JOIN album_images ai ON ai.album = a.id "
                          "GROUP BY a.id ORDER BY a.name COLLATE NOCASE")

    def _album_id(self, conn, name: str) -> int:
        row = conn.execute("SELECT id FROM albums WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return row[0]

    def create_album(self, name: str) -> None:
        """KeyError-free: ValueError if the name is taken."""
        try:
            with self.transaction() as conn:
                conn.execute("INSERT INTO albums(name, created) VALUES (?, ?)", (name, time.time()))
        except sqlite3.IntegrityError:
            raise ValueError(f"an album named {name!r} exists") from None

    def rename_album(self, old: str, new: str) -> None:
        """KeyError if `old` does not exist, ValueError if `new` is taken."""
        try:
            with self.transaction() as conn:
                conn.execute("UPDATE albums SET name = ? WHERE id = ?", (new, self._album_id(conn, old)))
        except sqlite3.IntegrityError:
            raise ValueError(f"an album named {new!r} exists") from None

    def delete_album(self, name: str) -> None:
        """Remove the album (its images stay in the gallery). KeyError if absent."""
        with self.transaction() as conn:
            album = self._album_id(conn, name)
            conn.execute("DELETE FROM album_images WHERE album = ?", (album,))
            conn.execute("DELETE FROM albums WHERE id = ?", (album,))

    def _album_links(self, conn, ids: list[str], name: str) -> list[tuple[int, int]]:
        album = self._album_id(conn, name)
        links = []
        for chunk in _chunks([check_id(i) for i in ids]):
            links += [(album, s) for (s,) in conn.execute(f"SELECT seq FROM images WHERE id IN ({_marks(len(chunk))})",
                                                          chunk)]
        return links

    def _change_album(self, sql: str, ids: list[str], name: str) -> int:
        """Run `sql` for every (album, image) link of `ids` in album `name`; returns the rows it changed."""
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(sql, self._album_links(conn, ids, name))
            return conn.total_changes - before

    def add_to_album(self, ids: list[str], name: str) -> int:
        """Add the images (those that exist) to an album; returns how many were new to it. KeyError: no album."""
        return self._change_album("INSERT OR IGNORE INTO album_images(album, image) VALUES (?, ?)", ids, name)

    def remove_from_album(self, ids: list[str], name: str) -> int:
        """Take the images out of an album (files and records stay); returns how many were in it."""
        return self._change_album("DELETE FROM album_images WHERE album = ? AND image = ?", ids, name)

    def albums_of(self, record_id: str) -> list[str]:
        return [r[0] for r in self._read("SELECT a.name FROM albums a JOIN album_images ai ON ai.album = a.id "
                                         "JOIN images i ON i.seq = ai.image WHERE i.id = ? ORDER BY a.name",
                                         (check_id(record_id),))]

    # ------------------------------------------------------------------ file moves (the intent journal)
    def begin_moves(self, op: str, moves: list[tuple[str, str, str]]) -> list[int]:
        """Journal the intent to move files, one (image id, from, to) each, before touching a file; `op` is
        "trash", "restore" or "purge" (to = ""). Returns the journal ids."""
        now = time.time()
        with self.transaction() as conn:
            return [conn.execute("INSERT INTO moves(image, op, src, dst, at) VALUES (?, ?, ?, ?, ?)",
                                 (check_id(i), op, src, dst, now)).lastrowid for i, src, dst in moves]

    def finish_moves(self, journal_ids: list[int]) -> None:
        """After the files moved: apply each journalled op to its record and drop the journal entries, all in
        one transaction (trash: mark trashed at the intent's time; restore: unmark; purge: delete the record)."""
        with self.transaction() as conn:
            for chunk in _chunks(journal_ids):
                marks = _marks(len(chunk))
                conn.execute("UPDATE images SET trashed = (SELECT at FROM moves m WHERE m.image = images.id AND "
                             f"m.op = 'trash' AND m.id IN ({marks})) WHERE id IN (SELECT image FROM moves WHERE "
                             f"op = 'trash' AND id IN ({marks}))", chunk + chunk)
                conn.execute(f"UPDATE images SET trashed = 0, missing = 0 WHERE id IN (SELECT image FROM moves "
                             f"WHERE op = 'restore' AND id IN ({marks}))", chunk)
                conn.execute(f"DELETE FROM images WHERE id IN (SELECT image FROM moves WHERE op = 'purge' "
                             f"AND id IN ({marks}))", chunk)
                conn.execute(f"DELETE FROM moves WHERE id IN ({marks})", chunk)

    def abandon_moves(self, journal_ids: list[int]) -> None:
        """Drop journal entries whose files did not move (the records stay as they were)."""
        with self.transaction() as conn:
            for chunk in _chunks(journal_ids):
                conn.execute(f"DELETE FROM moves WHERE id IN ({_marks(len(chunk))})", chunk)

    def pending_moves(self) -> list[dict]:
        """Journal entries left by a process that stopped between its file moves and its commit."""
        return [dict(zip(("id", "image", "op", "src", "dst", "at"), r))
                for r in self._read("SELECT id, image, op, src, dst, at FROM moves ORDER BY id")]

    def trashed_before(self, when: float, limit: int = 10_000) -> list[dict]:
        """Records moved to the trash before `when` (epoch s), oldest first."""
        rows = self._read(f"{RECORDS} WHERE i.trashed > 0 AND i.trashed < ? "
                          "ORDER BY i.trashed LIMIT ?", (when, limit))
        return [from_row(r) for r in rows]

    # ------------------------------------------------------------------ thumbnails
    def thumbnails_due(self, limit: int) -> list[dict]:
        """Up to `limit` records (newest first, outside the trash) whose thumbnail is not known to exist."""
        rows = self._read(f"{RECORDS} WHERE i.thumb = 0 AND i.trashed = 0 "
                          "ORDER BY i.seq DESC LIMIT ?", (limit,))
        return [from_row(r) for r in rows]

