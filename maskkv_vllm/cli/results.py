"""Where ``maskkv eval`` and ``maskkv bench`` write: ``--out-dir`` and ``--force``."""

from __future__ import annotations

import argparse
import sys


def add_out_dir_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument(
        "--out-dir",
        default=None,
        help=f"where results go (default: a new maskkv-runs/{kind}-TIME here)",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite results in --out-dir"
    )


def results_dir(value: str | None, kind: str, force: bool):
    """Where ``kind`` writes: ``--out-dir``, else a fresh ``maskkv-runs/KIND-TIME``
    (never the committed ``benchmarks/results``); an existing folder with files
    in it is refused without ``--force``."""
    import time
    from pathlib import Path

    if value is None:
        path = Path("maskkv-runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    else:
        path = Path(value)
    if path.is_dir() and any(path.iterdir()) and not force:
        names = ", ".join(sorted(p.name for p in path.iterdir())[:4])
        raise ValueError(
            f"{path} already holds results ({names}): pass --force to overwrite "
            "them, or choose another --out-dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    print(f"results go to {path}/", file=sys.stderr)
    return path
