"""One gallery record: validation, and its split into indexed columns + a JSON remainder (and back).

A record is a dict: id (uuid4 hex), path (relative to the data dir, POSIX), prompt, negative_prompt, model,
job_id, created (epoch s), source, params (dict, with the A1111 "infotext"), rating (0-5), favourite (bool),
verdict, trashed (epoch s of the move to the trash, 0 when not), and any other JSON field a caller sets.
The indexed extras (sampler, size, seed, LoRAs, ControlNets, run id) are read from params or the infotext.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid

from studio.infotext import controlnet_units_from_infotext, parse_infotext

ID_RE = re.compile(r"[0-9a-f]{32}")
DRIVE_RE = re.compile(r"[A-Za-z]:")  # a Windows drive ("C:x.png" is relative to C:'s current folder)
REQUIRED = ("path", "prompt")
STR_FIELDS = ("path", "prompt", "negative_prompt", "model", "job_id", "source", "verdict")
# fields kept in their own columns; everything else lives in the JSON column `extra`
COLUMNS = ("id", "created", "path", "prompt", "negative_prompt", "model", "job_id", "source", "rating",
           "favourite", "verdict", "trashed")
LORA_TAG_RE = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>")


def check_id(record_id) -> str:
    """Return `record_id` if it is 32 lower-case hex characters (a uuid4().hex), else raise ValueError."""
    if not isinstance(record_id, str) or not ID_RE.fullmatch(record_id):
        raise ValueError(f"image id must be 32 hex characters; got {record_id!r}")
    return record_id


def check_path(path) -> str:
    """Return `path` if it is a relative POSIX path inside the data dir (no '..', no drive, no backslash)."""
    if (not isinstance(path, str) or not path or "\\" in path or "\0" in path or path.startswith("/")
            or DRIVE_RE.match(path) or ".." in path.split("/")):
        raise ValueError(f"image path must be relative to the data dir, in POSIX form; got {path!r}")
    return path


def validate(fields: dict, copy: bool = True) -> dict:
    """Type-check the known fields present in `fields`; return a JSON round-tripped (deep) copy (with
    `copy=False`: `fields` itself, whose JSON-ness to_rows checks when it serialises it)."""
    for key in STR_FIELDS:
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"gallery field {key!r} must be a string")
    if "path" in fields:
        check_path(fields["path"])
    if "id" in fields:
        check_id(fields["id"])
    if "params" in fields and not isinstance(fields["params"], dict):
        raise ValueError("gallery field 'params' must be a dict")
    for key, low, high in (("created", 0, 1e11), ("trashed", 0, 1e11)):
        value = fields.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ValueError(f"gallery field {key!r} must be an epoch time")
    rating = fields.get("rating", 0)
    if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 5:
        raise ValueError("gallery field 'rating' must be a whole number of stars from 0 to 5")
    if not isinstance(fields.get("favourite", False), bool):
        raise ValueError("gallery field 'favourite' must be true or false")
    if not copy:
        return fields
    try:
        return json.loads(json.dumps(fields, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gallery record is not plain JSON: {exc}") from None


def normalise(record: dict) -> dict:
    """A validated new record with its defaults (a fresh id, created now)."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"gallery record lacks {', '.join(missing)}")
    record = {"negative_prompt": "", "params": {}, "model": "", "job_id": "", "source": "", "rating": 0,
              "favourite": False, "verdict": "", "trashed": 0, **record}
    if not record.get("id"):
        record["id"] = uuid.uuid4().hex
    record.setdefault("created", time.time())
    return validate(record, copy=False)


def _int(value) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if -2**63 <= number < 2**63 else None


def indexed(record: dict) -> dict:
    """The searchable extras of a record: sampler, size, seed, run_id, loras, controlnets (from its params,
    else its A1111 infotext)."""
    params = record.get("params") or {}
    infotext = params.get("infotext") or ""
    info = parse_infotext(infotext) if infotext and not all(k in params for k in ("sampler", "width", "seed")) \
        else {}
    width, height = params.get("width"), params.get("height")
    size = f"{width}x{height}" if width and height else str(info.get("Size", ""))
    loras = [str(x[0] if isinstance(x, (list, tuple)) else x) for x in params.get("loras") or []]
    if "Lora weights" in infotext:
        info = info or parse_infotext(infotext)
        loras += [part.rsplit(":", 1)[0].strip() for part in str(info.get("Lora weights", "")).split(",")]
    loras += LORA_TAG_RE.findall(record.get("prompt", ""))
    controlnets = []
    if "ControlNet" in infotext:
        info = info or parse_infotext(infotext)
        controlnets = [u["model"] for u in controlnet_units_from_infotext(info) if u.get("model")]
    source = record.get("source", "")
    return {"sampler": str(params.get("sampler") or info.get("Sampler", "")), "size": size,
            "seed": _int(params["seed"]) if "seed" in params else _int(info.get("Seed")),
            "run_id": record.get("job_id", "") if source == "schedule" else str(params.get("run_id", "")),
            "loras": sorted({x for x in loras if x}), "controlnets": sorted({x for x in controlnets if x})}


def to_rows(record: dict, seq: int, size_bytes: int) -> tuple[tuple, tuple, list[tuple[str, str, int]]]:
    """The rows of a normalised record: `images` (INSERT_SQL's order), `image_text` (INSERT_TEXT_SQL's) and
    image_tags (kind, value, seq) for its LoRAs and ControlNets."""
    extra = {k: v for k, v in record.items() if k not in COLUMNS}
    try:
        extra_json = json.dumps(extra, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gallery record is not plain JSON: {exc}") from None
    idx = indexed(record)
    path = record["path"]
    row = (seq, record["id"], record["created"], time.strftime("%Y-%m-%d", time.localtime(record["created"])),
           path, path.rsplit("/", 1)[0] if "/" in path else "", size_bytes, record["model"], record["job_id"],
           idx["run_id"], record["source"], idx["sampler"], idx["size"], idx["seed"], record["rating"],
           int(record["favourite"]), record["verdict"], record["trashed"])
    text = (seq, record["prompt"], record["negative_prompt"], extra_json)
    tags = [("lora", v, seq) for v in idx["loras"]] + [("controlnet", v, seq) for v in idx["controlnets"]]
    return row, text, tags


ROW_COLUMNS = ("seq", "id", "created", "day", "path", "folder", "bytes", "model", "job_id", "run_id", "source",
               "sampler", "size", "seed", "rating", "favourite", "verdict", "trashed")
INSERT_SQL = f"INSERT INTO images({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
INSERT_TEXT_SQL = "INSERT INTO image_text(seq, prompt, negative_prompt, extra) VALUES (?, ?, ?, ?)"
# a record is read FROM images i JOIN image_text t (RECORD_JOIN)
SELECT_COLUMNS = "i.id, i.created, i.path, t.prompt, t.negative_prompt, i.model, i.job_id, i.source, i.rating, " \
                 "i.favourite, i.verdict, i.trashed, t.extra"
RECORD_JOIN = "JOIN image_text t ON t.seq = i.seq"


def from_row(row: tuple) -> dict:
    """A record from SELECT_COLUMNS."""
    record = dict(zip(COLUMNS, row[:-1]))
    record["favourite"] = bool(record["favourite"])
    return {**record, **json.loads(row[-1])}



def facet_deltas(rows: list[tuple], facets: tuple[str, ...]) -> list[tuple[str, str, int, int]]:
    """(kind, value, images, bytes) to add to facet_counts for new `images` rows (the "folder" facet counts
    bytes too)."""
    sizes = ROW_COLUMNS.index("bytes")
    totals: dict[tuple[str, str], list[int]] = {}
    for kind in facets:
        column = ROW_COLUMNS.index(kind)
        for row in rows:
            entry = totals.setdefault((kind, row[column]), [0, 0])
            entry[0] += 1
            if kind == "folder":
                entry[1] += row[sizes]
    return [(kind, value, n, size) for (kind, value), (n, size) in totals.items()]
