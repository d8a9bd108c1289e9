"""What a gallery search asks for (GalleryQuery), its validation, and its translation into SQL over the
gallery's SQLite schema (studio.stores.gallery_schema).

Text syntax: words (all must appear), "quoted phrases", -excluded words or -"phrases"; matched over the prompt
and the negative prompt, case-insensitively, by the FTS5 index.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from studio.curation.policy import VERDICTS
from studio.errors import ValidationError, check_range

PAGE_SIZE_MAX = 500
TEXT_MAX = 1000
NAME_MAX = 500
SEED_MAX = 2**63 - 1
SORTS = ("newest", "oldest", "rating", "score:<name>")
SCORE_NAME_RE = re.compile(r"[\w.\-]{1,64}")
SIZE_RE = re.compile(r"\d{1,5}x\d{1,5}")
TERM_RE = re.compile(r'(-?)"([^"]*)"?|(-?)([^\s"]+)')
WORD_RE = re.compile(r"\w")


@dataclass
class GalleryQuery:
    """One gallery search: text, filters, sort and page. Empty strings / None mean "any"."""

    text: str = ""
    model: str = ""
    lora: str = ""
    controlnet: str = ""
    sampler: str = ""
    size: str = ""             # image size "512x512"
    date_from: str = ""        # "YYYY-MM-DD", local calendar days, both ends included
    date_to: str = ""
    seed: int | None = None
    verdict: str = ""          # a curation verdict (studio.curation.policy.VERDICTS)
    score_name: str = ""       # with min_score: only images whose stored score `score_name` >= min_score
    min_score: float | None = None
    favourite: bool | None = None
    min_rating: int = 0        # 0..5 stars
    run_id: str = ""           # a schedule run
    job_id: str = ""
    album: str = ""
    trashed: bool = False      # False: the normal view; True: the trash
    sort: str = "newest"       # "newest" | "oldest" | "rating" | "score:<name>"
    page: int = 1              # from 1
    page_size: int = 100       # 1..PAGE_SIZE_MAX


def day_start(day: str, field: str) -> float:
    """Epoch seconds of local midnight starting `day` ("YYYY-MM-DD"), or ValidationError naming `field`."""
    try:
        parsed = datetime.strptime(day, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a date as YYYY-MM-DD; got {day!r}", field) from None
    return time.mktime(parsed.timetuple())


def _text(value, field: str, limit: int = NAME_MAX) -> str:
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise ValidationError(f"{field} must be text of at most {limit} characters; got {str(value)[:40]!r}", field)
    return value.strip()


def validate(q: GalleryQuery) -> GalleryQuery:
    """A checked copy of `q` (strings stripped, numbers converted); ValidationError names the field at fault."""
    out = GalleryQuery(text=_text(q.text, "text", TEXT_MAX))
    for name in ("model", "lora", "controlnet", "sampler", "run_id", "job_id", "album", "score_name", "size",
                 "date_from", "date_to", "verdict"):
        setattr(out, name, _text(getattr(q, name), name))
    if out.size and not SIZE_RE.fullmatch(out.size):
        raise ValidationError(f"size must be WIDTHxHEIGHT such as 512x512; got {out.size!r}", "size")
    for name in ("date_from", "date_to"):
        if getattr(out, name):
            day_start(getattr(out, name), name)
    if out.date_from and out.date_to and out.date_from > out.date_to:
        raise ValidationError(f"date_from {out.date_from} is after date_to {out.date_to}", "date_from")
    out.seed = None if q.seed in (None, "") else check_range("seed", q.seed, 0, SEED_MAX, int)
    if out.verdict and out.verdict not in VERDICTS:
        raise ValidationError(f"verdict must be one of {', '.join(VERDICTS)} (or empty); got {out.verdict!r}",
                              "verdict")
    if out.score_name and not SCORE_NAME_RE.fullmatch(out.score_name):
        raise ValidationError(f"score_name must be a score's name (letters, digits, _ . -); got {out.score_name!r}",
                              "score_name")
    if q.min_score not in (None, ""):
        if not out.score_name:
            raise ValidationError("min_score needs score_name (which score to compare)", "min_score")
        out.min_score = check_range("min_score", q.min_score, -1e12, 1e12)
    if q.favourite is not None and not isinstance(q.favourite, bool):
        raise ValidationError(f"favourite must be true, false or empty; got {q.favourite!r}", "favourite")
    out.favourite = q.favourite
    out.min_rating = check_range("min_rating", q.min_rating or 0, 0, 5, int)
    if not isinstance(q.trashed, bool):
        raise ValidationError(f"trashed must be true or false; got {q.trashed!r}", "trashed")
    out.trashed = q.trashed
    sort = _text(q.sort or "newest", "sort")
    name = sort[len("score:"):] if sort.startswith("score:") else None
    if sort not in SORTS[:3] and not (name and SCORE_NAME_RE.fullmatch(name)):
        raise ValidationError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}", "sort")
    out.sort = sort
    out.page = check_range("page", q.page, 1, 10**9, int)
    out.page_size = check_range("page_size", q.page_size, 1, PAGE_SIZE_MAX, int)
    return out


def _phrase(text: str) -> str | None:
    """An FTS5 string for `text` (quotes doubled), or None if it holds no word to match."""
    return '"' + text.replace('"', '""') + '"' if WORD_RE.search(text) else None


def parse_text(text: str) -> tuple[list[str], list[str]]:
    """(included, excluded) FTS5 phrases of a search text: words, "quoted phrases", -word, -"phrase"."""
    included, excluded = [], []
    for minus_q, quoted, minus_w, word in TERM_RE.findall(text or ""):
        phrase = _phrase(quoted if quoted or minus_q else word)
        if phrase:
            (excluded if (minus_q or minus_w) else included).append(phrase)
    return included, excluded


@dataclass
class CompiledQuery:
    """`SELECT <columns> FROM {frm} WHERE {where} ORDER BY {order}` with `params` in order."""

    frm: str
    where: str
    order: str
    params: list


# How a query with words is run (GalleryStore picks one from two bounded counts, see its _plan):
FTS = "fts"                # the FTS5 matches drive (in rowid order); each is looked up in images
FTS_IN_FILTER = "fts-in"   # the FTS5 matches drive, tested against the (few) images the filters pick
IMAGES = "images"          # the images drive in the sort's order; each is tested against the FTS5 index
PLANS = (FTS, FTS_IN_FILTER, IMAGES)


def fts_match(q: GalleryQuery) -> str | None:
    """The FTS5 expression of the query's text when it has words to find (None: no words, maybe exclusions)."""
    included, excluded = parse_text(q.text)
    if not included:
        return None
    return "(" + " AND ".join(included) + ")" + (" NOT (" + " OR ".join(excluded) + ")" if excluded else "")


def has_filters(q: GalleryQuery) -> bool:
    """Whether anything beside the text narrows the images (the trash counts: it is small)."""
    return bool(q.model or q.lora or q.controlnet or q.sampler or q.size or q.date_from or q.date_to or q.verdict
                or q.score_name or q.min_rating or q.run_id or q.job_id or q.album or q.trashed
                or q.seed is not None or q.favourite is not None)


def filter_terms(q: GalleryQuery, seq_of_time, key: str = "i.seq") -> tuple[list[str], list]:
    """WHERE terms (and their parameters) of every filter but the text, over the alias `i`; `key` is the
    column that holds the ordering key (FTS5's rowid takes date bounds itself)."""
    where, params = [], []
    for column in ("model", "sampler", "size", "verdict", "run_id", "job_id"):
        if getattr(q, column):
            where.append(f"i.{column} = ?")
            params.append(getattr(q, column))
    for kind in ("lora", "controlnet"):
        if getattr(q, kind):
            where.append("i.seq IN (SELECT image FROM image_tags WHERE kind = ? AND value = ?)")
            params += [kind, getattr(q, kind)]
    if q.date_from:
        where.append(f"{key} >= ?")
        params.append(seq_of_time(day_start(q.date_from, "date_from")))
    if q.date_to:
        next_day = datetime.strptime(q.date_to, "%Y-%m-%d") + timedelta(days=1)
        where.append(f"{key} < ?")
        params.append(seq_of_time(time.mktime(next_day.timetuple())))
    if q.seed is not None:
        where.append("i.seed = ?")
        params.append(q.seed)
    if q.favourite is not None:
        where.append(f"i.favourite = {int(q.favourite)}")  # a literal: the planner then sees its index fits
    if q.min_rating:
        where.append("i.rating >= ?")
        params.append(q.min_rating)
    if q.album:
        where.append("i.seq IN (SELECT image FROM album_images WHERE album = (SELECT id FROM albums WHERE name = ?))")
        params.append(q.album)
    where.append("i.trashed > 0" if q.trashed else "i.trashed = 0")
    sort_score = q.sort[len("score:"):] if q.sort.startswith("score:") else None
    if q.score_name and q.score_name != sort_score:
        where.append("i.seq IN (SELECT image FROM scores WHERE name = ? AND value >= ?)")
        params += [q.score_name, q.min_score if q.min_score is not None else -1e300]
    return where, params


def images_table(q: GalleryQuery) -> str:
    """The images table for a scan that the images drive (the trash is read through its small partial index)."""
    return "images i INDEXED BY images_trashed" if q.trashed else "images i"


def compile_query(q: GalleryQuery, seq_of_time, plan: str = FTS) -> CompiledQuery:
    """SQL for a validated query over the alias `i` (images); `seq_of_time(epoch)` maps a time to the images'
    ordering key (see GalleryStore), so date ranges are ranges of the primary key. `plan` (one of PLANS) says
    which side drives a search with words; SQLite's own guess is poor there (it cannot know how many rows an
    FTS5 match yields), and a wrong guess costs seconds at a million images."""
    match = fts_match(q)
    _, excluded = parse_text(q.text)
    where, params = [], []
    fts_drives = match is not None and plan != IMAGES
    key = "f.rowid" if fts_drives else "i.seq"  # FTS5 takes rowid bounds and ordering itself
    if fts_drives:
        frm = "images_fts f CROSS JOIN images i ON i.seq = f.rowid"
        where.append("images_fts MATCH ?")
        params.append(match)
    else:
        frm = images_table(q)
        if match is not None:
            where.append("EXISTS (SELECT 1 FROM images_fts WHERE images_fts MATCH ? AND rowid = i.seq)")
            params.append(match)
        elif excluded:
            where.append("NOT EXISTS (SELECT 1 FROM images_fts WHERE images_fts MATCH ? AND rowid = i.seq)")
            params.append(" OR ".join(excluded))
    terms, term_params = filter_terms(q, seq_of_time, key if plan != FTS_IN_FILTER else "i.seq")
    if fts_drives and plan == FTS_IN_FILTER:
        where.append(f"+f.rowid IN (SELECT i.seq FROM {images_table(q)} WHERE {' AND '.join(terms)})")
    else:
        where += terms
    params += term_params
    sort_score = q.sort[len("score:"):] if q.sort.startswith("score:") else None
    if sort_score:
        frm += " JOIN scores s ON s.image = i.seq AND s.name = ?"
        params.insert(0, sort_score)  # the FROM clause's parameter comes before the WHERE clause's
        if q.score_name == sort_score and q.min_score is not None:
            where.append("s.value >= ?")
            params.append(q.min_score)
        order = "s.value DESC, i.seq DESC"
    else:
        order = {"newest": f"{key} DESC", "oldest": f"{key} ASC", "rating": "i.rating DESC, i.seq DESC"}[q.sort]
    return CompiledQuery(frm, " AND ".join(where), order, params)


def filter_sizes(q: GalleryQuery, seq_of_time) -> list[tuple[str, str, list]]:
    """(FROM, WHERE, params) of one single-table count per filter, each answered from a covering index
    without reading a row: the smallest count bounds how many images the filters pick together."""
    sizes = []
    for column in ("model", "sampler", "size", "verdict", "run_id", "job_id"):
        if getattr(q, column):
            sizes.append(("images", f"{column} = ?", [getattr(q, column)]))
    for kind in ("lora", "controlnet"):
        if getattr(q, kind):
            sizes.append(("image_tags", "kind = ? AND value = ?", [kind, getattr(q, kind)]))
    if q.seed is not None:
        sizes.append(("images", "seed = ?", [q.seed]))
    if q.favourite is not None:
        sizes.append(("images", f"favourite = {int(q.favourite)}", []))
    if q.min_rating:
        sizes.append(("images", "rating >= ?", [q.min_rating]))
    if q.album:
        sizes.append(("album_images", "album = (SELECT id FROM albums WHERE name = ?)", [q.album]))
    if q.score_name:
        sizes.append(("scores", "name = ? AND value >= ?",
                      [q.score_name, q.min_score if q.min_score is not None else -1e300]))
    if q.date_from or q.date_to:
        low = seq_of_time(day_start(q.date_from, "date_from")) if q.date_from else 0
        high = (seq_of_time(time.mktime((datetime.strptime(q.date_to, "%Y-%m-%d") + timedelta(days=1)).timetuple()))
                if q.date_to else 2**63 - 1)
        sizes.append(("images", "seq >= ? AND seq < ?", [low, high]))
    if q.trashed:
        sizes.append(("images INDEXED BY images_trashed", "trashed > 0", []))
    return sizes
