"""Where the benchmarks keep their work files and find their tools."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
CORPUS_DIR = BENCH_DIR / "corpus"
CALIBRATION_DIR = BENCH_DIR / "calibration"  # int8 calibration images, disjoint crops
WEIGHTS_PATH = BENCH_DIR / "weights.pt"
RESULTS_PATH = BENCH_DIR / "results.json"
DEFAULT_REPORT = ROOT / "docs" / "benchmarks.md"


def tool(name: str) -> str | None:
    """Path of a console script, preferring the interpreter's own environment.

    The venv's ``bin`` is often not on PATH under ``make``, so look beside the
    running interpreter before falling back to PATH.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def relative(path: Path) -> str:
    """A path as shown in reports: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
