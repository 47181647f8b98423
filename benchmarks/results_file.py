"""Writes a benchmark's results file in the shape ``run_all.py`` reads (see benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def save_results(path: Path, *, started: float, summary: list[dict[str, Any]], **fields: Any) -> None:
    """Writes ``path`` with the command that was run, the machine, ``summary`` and any other ``fields``.

    Args:
        started: ``time.perf_counter()`` when the benchmark began, for its wall time.
        summary: the rows for the results table (metric, figure, aim, met).
    """
    script = Path(sys.argv[0]).name
    document = {
        "benchmark": path.stem,
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        **fields,
        "summary": summary,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
