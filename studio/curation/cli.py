"""Score a folder of images from a terminal, with the studio's curation service:

    ./launch.sh curate DIR [--json OUT] [--threshold 0.5] [--weight sharpness=3 ...] [--workers 2]
    python -m studio.curation.cli DIR [...]

Prints a progress bar, then one line per image (verdict, score, reason) and the near-duplicate groups; with
--json, writes per image every metric, the unavailable ones with their reason, the combined score, the verdict
and its reason, plus the duplicate groups. Nothing is written into the studio's data folder: the run uses a
temporary one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _weights(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--weight takes metric=value; got {item!r}")
        out[key.strip()] = float(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch.sh curate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--json", type=Path, default=None, help="write the full results to this JSON file")
    p.add_argument("--threshold", type=float, default=None, help="accept threshold for the combined score (0..1)")
    p.add_argument("--weight", action="append", default=[], help="metric=weight (repeat), e.g. sharpness=3")
    p.add_argument("--workers", type=int, default=2, help="parallel scoring processes (0: in this process)")
    return p.parse_args(argv)


def _bar(progress) -> None:
    width = 30
    filled = int(width * progress.done / max(1, progress.total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.message}   ")
    sys.stderr.flush()


def run(argv: list[str] | None = None) -> dict:
    """Score the folder; print the results; return what --json writes."""
    from studio.curation_service import CurationRequest, CurationService
    from studio.errors import StudioError
    from studio.paths import PathGuard
    from studio.stores.atomic_storage import JsonStore
    from studio.stores.curation_store import CurationStore

    args = parse_args(argv)
    folder = args.folder.expanduser().resolve()
    if not folder.is_dir():
        raise SystemExit(f"curate: {args.folder} is not a folder")
    with tempfile.TemporaryDirectory(prefix="curate-") as tmp:
        db = Path(tmp) / "db"
        service = CurationService(CurationStore(db), None, Path(tmp), PathGuard([folder]), Path(tmp) / "models",
                                  JsonStore(db / "settings.json"), workers=args.workers)
        try:
            report = service.run(CurationRequest(folder=str(folder), weights=_weights(args.weight) or None,
                                                 threshold=args.threshold), progress=_bar)
        except StudioError as exc:
            raise SystemExit(f"curate: {exc}") from None
        finally:
            service.close()
        sys.stderr.write("\n")
        policy = service.make_policy(_weights(args.weight) or None, args.threshold)
    by_id = {r["id"]: r for r in report.records}
    images = []
    for r in sorted(report.records, key=lambda r: r["path"]):
        auto = r.get("auto") or {}
        images.append({"path": r["path"], "verdict": r["verdict"], "reason": auto.get("reason"),
                       "score": r.get("score"), "metrics": r.get("metrics", {}),
                       "unavailable": r.get("unavailable", {}), "error": r.get("error"),
                       "duplicate_of": by_id[r["duplicate_of"]]["path"] if r.get("duplicate_of") in by_id else None,
                       "size": r.get("size"), "mode": r.get("mode")})
    groups = [{"keep": by_id[g["keep"]]["path"], "members": [by_id[m]["path"] for m in g["members"] if m in by_id]}
              for g in report.groups if g["keep"] in by_id]
    for item in images:
        score = "  -  " if item["score"] is None else f"{item['score']:.3f}"
        print(f"{item['verdict'] or 'error':<9} {score}  {Path(item['path']).relative_to(folder)}  "
              f"{item['reason'] or item['error'] or ''}")
    for g in groups:
        print("duplicates: keep", Path(g["keep"]).relative_to(folder), "<-",
              ", ".join(str(Path(m).relative_to(folder)) for m in g["members"] if m != g["keep"]))
    print(report.message)
    out = {"folder": str(folder), "policy": policy.to_dict(), "summary": report.summary() | {"duplicate_groups":
                                                                                              len(groups)},
           "images": images, "duplicate_groups": groups}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    run()
