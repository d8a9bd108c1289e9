"""Files of a resumable training run: torch checkpoints and the JSON state, each written to a temp file and then
renamed, so a kill leaves the previous complete file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def atomic_save(obj, path: Path) -> None:
    """torch.save `obj` to `path` through a temp file (fsynced, then renamed)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_if_exists(path: Path, weights_only: bool = True):
    """The checkpoint at `path` (on the CPU), or None when there is none."""
    return torch.load(path, map_location="cpu", weights_only=weights_only) if path.exists() else None


def save_json_state(state: dict, path: Path) -> None:
    """Write a run's state as JSON through a temp file and a rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def replace_folder(tmp: Path, out: Path) -> None:
    """Put a completely written folder `tmp` in the place of `out` (an export replaces its earlier one)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)


def run_parser(description: str, work_dir: str, out: str, threads: int):
    """The argument parser every resumable training command starts from: --work-dir (its state), --out (the
    exported folder), --seed and --threads; the command adds its own flags, then calls `parse_run_args`."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=work_dir)
    p.add_argument("--out", default=out)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=threads)
    return p


def parse_run_args(parser, argv=None):
    """Parse `argv` (None: the command line), keeping the arguments as given in `args.argv` for the model card."""
    import sys

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args
