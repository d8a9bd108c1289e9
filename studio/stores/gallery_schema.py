"""The gallery's SQLite schema and connection settings.

`images` holds the narrow indexed columns (about 150 bytes a row, so filter tests stay in memory);
`image_text` the prompts and the JSON remainder of each record, under the same key, and is what FTS5 indexes.
`images.seq` (the rowid) is the creation time in microseconds, bumped by one on ties: newest first is
`ORDER BY seq DESC` for every query, FTS5 matches included (their rowid is the same key), and a date range is a
range of the primary key. `facet_counts` (images per model, sampler, size, verdict, day, folder, LoRA,
ControlNet, score name) lets the filter lists and statistics skip scanning the images.

Triggers keep the FTS5 index and `facet_counts` right on update and delete. Inserts do it per batch instead
(GalleryStore._insert: one INSERT ... SELECT into the FTS5 index, one upsert per facet value), since a trigger
firing per row costs several times more in a bulk insert.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = "1"
FACET_COLUMNS = ("model", "sampler", "size", "verdict", "day", "folder")


def _facet_rows(alias: str, sign: int) -> str:
    return ", ".join(f"('{c}', {alias}.{c}, {sign}, {f'{sign} * {alias}.bytes' if c == 'folder' else 0})"
                     for c in FACET_COLUMNS)


UPSERT = "ON CONFLICT(kind, value) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    day TEXT NOT NULL,
    path TEXT NOT NULL,
    folder TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL,
    job_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    source TEXT NOT NULL,
    sampler TEXT NOT NULL,
    size TEXT NOT NULL,
    seed INTEGER,
    rating INTEGER NOT NULL DEFAULT 0,
    favourite INTEGER NOT NULL DEFAULT 0,
    verdict TEXT NOT NULL DEFAULT '',
    trashed REAL NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0,
    thumb INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS image_text (
    seq INTEGER PRIMARY KEY, prompt TEXT NOT NULL, negative_prompt TEXT NOT NULL, extra TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_model ON images(model);
CREATE INDEX IF NOT EXISTS images_job ON images(job_id);
CREATE INDEX IF NOT EXISTS images_run ON images(run_id);
CREATE INDEX IF NOT EXISTS images_sampler ON images(sampler);
CREATE INDEX IF NOT EXISTS images_size ON images(size);
CREATE INDEX IF NOT EXISTS images_seed ON images(seed);
CREATE INDEX IF NOT EXISTS images_verdict ON images(verdict);
CREATE INDEX IF NOT EXISTS images_rating ON images(rating);
CREATE INDEX IF NOT EXISTS images_favourite ON images(favourite, rating);
CREATE INDEX IF NOT EXISTS images_trashed ON images(trashed) WHERE trashed > 0;
CREATE INDEX IF NOT EXISTS images_thumb ON images(thumb) WHERE thumb = 0;

CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(
    prompt, negative_prompt, content='image_text', content_rowid='seq', tokenize='unicode61 remove_diacritics 2');

CREATE TABLE IF NOT EXISTS image_tags (
    kind TEXT NOT NULL, value TEXT NOT NULL, image INTEGER NOT NULL, PRIMARY KEY (kind, value, image)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS image_tags_image ON image_tags(image);
CREATE TABLE IF NOT EXISTS scores (
    image INTEGER NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (image, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scores_by_value ON scores(name, value, image);
CREATE TABLE IF NOT EXISTS albums (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS album_images (
    album INTEGER NOT NULL, image INTEGER NOT NULL, PRIMARY KEY (album, image)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS album_images_image ON album_images(image);
CREATE TABLE IF NOT EXISTS facet_counts (
    kind TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL, bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS moves (
    id INTEGER PRIMARY KEY, image TEXT NOT NULL, op TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE TRIGGER IF NOT EXISTS text_delete AFTER DELETE ON image_text BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.seq, old.prompt, old.negative_prompt);
END;
CREATE TRIGGER IF NOT EXISTS text_update AFTER UPDATE OF prompt, negative_prompt ON image_text BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt)
        VALUES ('delete', old.seq, old.prompt, old.negative_prompt);
    INSERT INTO images_fts(rowid, prompt, negative_prompt) VALUES (new.seq, new.prompt, new.negative_prompt);
END;
CREATE TRIGGER IF NOT EXISTS images_delete AFTER DELETE ON images BEGIN
    INSERT INTO facet_counts(kind, value, n, bytes) VALUES {_facet_rows('old', -1)} {UPSERT};
    DELETE FROM image_text WHERE seq = old.seq;
    DELETE FROM image_tags WHERE image = old.seq;
    DELETE FROM scores WHERE image = old.seq;
    DELETE FROM album_images WHERE image = old.seq;
END;
CREATE TRIGGER IF NOT EXISTS images_facets AFTER UPDATE OF {', '.join(FACET_COLUMNS)}, bytes ON images BEGIN
    INSERT INTO facet_counts(kind, value, n, bytes) VALUES {_facet_rows('old', -1)} {UPSERT};
    INSERT INTO facet_counts(kind, value, n, bytes) VALUES {_facet_rows('new', 1)} {UPSERT};
END;
CREATE TRIGGER IF NOT EXISTS tags_insert AFTER INSERT ON image_tags BEGIN
    INSERT INTO facet_counts(kind, value, n) VALUES (new.kind, new.value, 1) {UPSERT};
END;
CREATE TRIGGER IF NOT EXISTS tags_delete AFTER DELETE ON image_tags BEGIN
    UPDATE facet_counts SET n = n - 1 WHERE kind = old.kind AND value = old.value;
END;
CREATE TRIGGER IF NOT EXISTS scores_insert AFTER INSERT ON scores BEGIN
    INSERT INTO facet_counts(kind, value, n) VALUES ('score', new.name, 1) {UPSERT};
END;
CREATE TRIGGER IF NOT EXISTS scores_delete AFTER DELETE ON scores BEGIN
    UPDATE facet_counts SET n = n - 1 WHERE kind = 'score' AND value = old.name;
END;
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode that fsyncs every commit (a returned write survives a crash or power loss);
    transactions are explicit (`with conn:` commits or rolls back)."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level="DEFERRED")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache per connection
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA mmap_size=1073741824")  # reads of cached pages without a system call
    return conn


def create(conn: sqlite3.Connection) -> None:
    """Create every table, index and trigger that is missing."""
    with conn:
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
