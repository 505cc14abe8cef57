"""A planted checkpoint: a pickle that runs code when loaded by full pickle."""

from __future__ import annotations

import pickle
from pathlib import Path


class Planted:
    """A pickle that creates ``marker`` when unpickled by full pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def plant(path: Path, marker: Path) -> Path:
    """Write a checkpoint at ``path`` whose loading by full pickle creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"conv1.weight": Planted(marker)}))
    return path
