"""One measured figure set per row, shared by every benchmark, the console and the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

Figure = float | int | str | None


@dataclass
class Row:
    """A contender or measurement; ``status`` is ok, hung, error or skipped.

    ``images`` over ``seconds`` is the row's rate; rows that time one event leave ``images`` unset.
    """

    group: str
    name: str
    status: str = "ok"
    images: int | None = None
    seconds: float | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    note: str = ""
    unit: str = "img/s"  # what ``images`` counts, per second
    # 1-minute load average when the row was recorded: the contenders keep about 2 tasks
    # runnable, so a clearly higher figure means other work shared the cores.
    load: float | None = None

    @property
    def rate(self) -> float | None:
        if self.status != "ok" or not self.images or not self.seconds:
            return None
        return self.images / self.seconds

    def console(self) -> str:
        parts = [f"[{self.group}] {self.name}: {self.status}"]
        if self.rate is not None:
            parts.append(f"{self.rate:,.1f} {self.unit} ({self.images} in {self.seconds:.1f} s)")
        elif self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        parts += [f"{k}={_fmt(v)}" for k, v in self.figures.items()]
        if self.load is not None:
            parts.append(f"load={self.load:.1f}")
        if self.note:
            parts.append(f"- {self.note}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rate"] = self.rate
        return data


def _fmt(value: Figure) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def error_row(group: str, name: str, exc: BaseException) -> Row:
    return Row(group, name, status="error", note=f"{type(exc).__name__}: {exc}")


def load(path: Path) -> tuple[list[Row], dict[str, Any]]:
    """Rows and meta written by :func:`dump`."""
    payload = json.loads(path.read_text())
    names = {f.name for f in fields(Row)}
    rows = [Row(**{k: v for k, v in r.items() if k in names}) for r in payload["rows"]]
    return rows, payload["meta"]


def dump(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": [r.to_json() for r in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
