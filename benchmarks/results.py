"""One measured figure set per row, shared by every benchmark, the console and the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Figure = float | int | str | None


@dataclass
class Row:
    """A contender or measurement; ``status`` is ok, hung, error or skipped."""

    group: str
    name: str
    status: str = "ok"
    images: int | None = None
    seconds: float | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""

    @property
    def img_per_s(self) -> float | None:
        if self.status != "ok" or not self.images or not self.seconds:
            return None
        return self.images / self.seconds

    def console(self) -> str:
        parts = [f"[{self.group}] {self.name}: {self.status}"]
        if self.img_per_s is not None:
            parts.append(f"{self.img_per_s:.1f} img/s ({self.images} in {self.seconds:.1f} s)")
        elif self.images is not None:
            parts.append(f"{self.images} images")
        parts += [f"{k}={_fmt(v)}" for k, v in self.figures.items()]
        if self.note:
            parts.append(f"- {self.note}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["img_per_s"] = self.img_per_s
        return data


def _fmt(value: Figure) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def error_row(group: str, name: str, exc: BaseException) -> Row:
    return Row(group, name, status="error", note=f"{type(exc).__name__}: {exc}")


def dump(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [r.to_json() for r in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
