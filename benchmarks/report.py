"""Writes the Markdown report and its bar chart from one run's rows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines
import matplotlib.pyplot as plt

from benchmarks.layout import relative
from benchmarks.photos import POOL_NAME as PHOTOS_POOL
from benchmarks.results import Row
from benchmarks.targets import evaluate, reference_rate

log = logging.getLogger(__name__)

THROUGHPUT_GROUPS = ("baseline", "visionq", "remote")
MARK = {True: "pass", False: "**FAIL**", None: "not measured"}


def _rate_cell(row: Row) -> str:
    if row.rate is not None:
        return f"{row.rate:.1f}"
    if row.status == "hung":
        return f"hung ({row.images} done in {row.seconds:.0f} s)"
    return row.status


def _ratio_cell(row: Row, ref: float | None) -> str:
    if row.rate is None or not ref:
        return "-"
    return f"{row.rate / ref:.2f}x"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], body: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return [*lines, ""]


def _throughput(rows: list[Row], ref: float | None) -> list[str]:
    body = [
        [r.name, _rate_cell(r), _ratio_cell(r, ref), r.images if r.images is not None else "-",
         f"{r.seconds:.1f}" if r.seconds else "-", _busy_cell(r), _load_cell(r), r.note]
        for r in rows if r.group in THROUGHPUT_GROUPS
    ]  # fmt: skip
    header = [
        "contender", "img/s", "x fp32 ref pool", "images", "seconds", "children busy", "load",
        "note",
    ]  # fmt: skip
    return _table(header, body)


def _busy_cell(row: Row) -> str:
    busy = row.figures.get("children_busy_pct")
    return f"{busy}%" if busy is not None else "-"


def _load_cell(row: Row) -> str:
    return f"{row.load:.1f}" if row.load is not None else "-"


def _accuracy(rows: list[Row]) -> list[str]:
    body = []
    for r in rows:
        if r.group != "accuracy":
            continue
        f = r.figures
        if r.status != "ok":
            body.append([r.name, "-", "-", "-", "-", "-", "-", r.note])
            continue
        flips = f"{f.get('top1_flips')} (largest margin {f.get('max_flip_margin')})"
        body.append(
            [r.name, f.get("images"), f"{f.get('top1_agree_pct')}%", flips,
             f"{f.get('top5_same_order_pct')}%", f.get("max_dprob"), f.get("mean_max_dprob"),
             r.note]
        )  # fmt: skip
    header = [
        "comparison", "images", "top-1 agreement", "top-1 flips (reference top-1 margin)",
        "same top-5 order", "max abs dprob", "mean per-image max", "note",
    ]  # fmt: skip
    return _table(header, body)


def _photos(rows: list[Row]) -> list[str]:
    shown = [r for r in rows if r.group == "photos"]
    if not shown:
        return ["Not measured in this run.", ""]
    ref = next((r.rate for r in shown if r.name == PHOTOS_POOL), None)
    body = []
    for r in shown:
        agree = r.figures.get("top1_agree_pct")
        body.append([r.name, _rate_cell(r), _ratio_cell(r, ref),
                     f"{agree}%" if agree is not None else "-", _load_cell(r), r.note])  # fmt: skip
    header = ["contender", "img/s", "x pool on photos", "top-1 vs exact fp32", "load", "note"]
    intro = [
        "4032x3024 JPEGs (quality 90, with sensor-like noise) built from the corpus's photos;",
        "decoding is most of the cost here. Top-1 agreement is with the pool's fp32 outputs",
        "on the same photos (random weights: a lower bound for real ones).",
        "",
    ]
    return intro + _table(header, body)


def _scale(rows: list[Row]) -> list[str]:
    body = []
    for r in rows:
        if r.group != "scale":
            continue
        f = r.figures
        if r.status == "error" and not f:
            body.append([r.name, "-", "-", "-", "-", "-", "-", r.note])
            continue
        body.append(
            [r.name, f"{f.get('paths_per_s', 0):,}", f"{r.seconds:.1f}" if r.seconds else "-",
             f.get("producer_reported_s") or "-",
             f.get("producer_peak_rss_mb"),
             f"{f.get('redis_before_mb')} / {f.get('redis_peak_mb')} / {f.get('redis_after_mb')}"
             + (f" (peak +{f['redis_growth_mb']})" if "redis_growth_mb" in f else ""),
             f"{f.get('results_db_keys_after')} (+{f.get('results_db_keys_added')}); "
             f"broker {f.get('broker_db_keys_after')}",
             r.note]
        )  # fmt: skip
    return _table(
        [
            "run",
            "paths/s",
            "seconds (launch to exit)",
            "job seconds (producer summary)",
            "producer peak RSS MB",
            "Redis MB before / peak / after",
            "keys after",
            "note",
        ],
        body,
    )


def _coldstart(rows: list[Row]) -> list[str]:
    body = []
    for r in rows:
        if r.group != "coldstart":
            continue
        f = r.figures
        body.append(
            [r.name, f.get("first_result_s", "-"), f.get("first_child_ready_s", "-"),
             f.get("children_ready_s", "-"),
             f.get("child_load_ms", "-"), f.get("warm_1image_job_s", "-"),
             r.note if r.status != "ok" else ""]
        )  # fmt: skip
    return _table(
        [
            "measure",
            "first result s",
            "first child warm s",
            "both children warm s",
            "per-child load_ms",
            "1-image job on a warm worker s",
            "note",
        ],
        body,
    )


def _targets(rows: list[Row]) -> list[str]:
    return _table(
        ["target", "measured", "result"],
        [[v.target, v.measured, MARK[v.passed]] for v in evaluate(rows)],
    )


def _machine(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    return [
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']} ({m['cores']} cores available; {m['cpu_features']}), "
        f"{m['memory_gib']} GiB RAM, {m['os']}",
        f"- Software: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"celery {m['celery']}, {m['redis_server']}",
        f"- Corpus: {meta['images']} JPEGs (quality 90, short side 300-500 px) derived from the "
        "scikit-image sample photos; ResNet-18 with seeded random-init weights shared by every "
        "contender",
        f"- Command: `{meta['command']}`; wall time {meta['wall_s']:.0f} s",
        "",
    ]


ABOUT = """\
## What each contender is

- **starting design**: the blog-post pattern visionq replaced: `torch.multiprocessing`, one process
  per core with the default torch thread count, one image per forward pass, workers polling
  `queue.empty()`, and a forward pass in the parent before the workers start. With `fork` the
  children inherit a running OpenMP pool and block forever in their first convolution; the run is
  killed at its deadline and the images finished by then are counted. The `spawn` variant is the
  same code with only the start method changed.
- **reference pool**: the best plain-torch pipeline for this machine and the denominator of every
  ratio: 2 spawned processes x 1 torch thread, PIL decode plus the torchvision ImageNet eval
  transforms, batch 8, channels_last, `inference_mode`, models warmed before the clock starts.
  The bf16 row adds `torch.autocast("cpu", dtype=torch.bfloat16)`.
- **visionq**: the real system: a private Redis, `celery -A workers worker -P prefork -c 2`
  started and warmed before the clock, then `visionq submit --from-file ... --top-k 5` timed from
  launch to exit, so publishing, the broker, result writes and output collection all count.
  The children-busy column is the decode and inference time the children reported, over
  2 children x the wall time: what is missing from 100% is time the children spent waiting on
  the queue, Redis or the producer. The int8 row is the opt-in `VISIONQ_PRECISION=int8`
  (static x86 quantization), calibrated on 64 other crops of the same photos, never measured.
- **remote**: the same warm fp32 worker on the same corpus twice, at the default chunk size: from
  local paths, then as URLs from a loopback HTTP server that waits 50 ms before each answer
  (keep-alive and TCP_NODELAY, as object stores and CDNs answer). The server runs in the
  benchmark's own process, so its CPU comes out of the same 2 cores as the children's.
  Each pool child fetches ahead of its decoder (`VISIONQ_FETCH_CONCURRENCY`), so the latency
  should hide behind the forward pass; what cannot hide is the first fetch of each chunk.
- **missing-path job**: a manifest of paths that do not exist, so no image is decoded and no model
  runs: what remains is the queue's own cost per path, the producer's memory and what a finished
  job leaves in Redis.
- **precision**: `max abs dprob` is the largest probability difference over every class (full
  arrays) or over the classes both top-5 lists contain. With random-init weights the probabilities
  are nearly flat (the best class rarely tops 0.2), so near-ties make top-1 flips far likelier than
  with trained weights. The flips column gives, for the images whose top-1 changed, the largest
  margin between the reference's first and second class: a flip whose margin is below
  `max abs dprob` is a near-tie that any rounding may break.
"""


def _chart(rows: list[Row], ref: float | None, png: Path) -> None:
    shown = [r for r in rows if r.group in THROUGHPUT_GROUPS]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.4))
    names = [r.name.replace(" (2 spawned x 1 thread, batch 8, channels_last)", "") for r in shown]
    rates = [r.rate or 0.0 for r in shown]
    colours = ["#8c8c8c" if r.group == "baseline" else "#1f77b4" for r in shown]
    y = range(len(shown))
    ax.barh(list(y), rates, color=colours)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    for i, r in enumerate(shown):
        label = f"{r.rate:.1f}" if r.rate is not None else r.status
        ax.text(rates[i] + max([*rates, 1]) * 0.01, i, label, va="center", fontsize=8)
    if ref:
        ax.axvline(
            ref,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"fp32 reference pool ({ref:.1f})",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("images per second (higher is better)")
    ax.set_title("ResNet-18 classification throughput, same corpus and weights")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _load_note(meta: dict[str, Any]) -> str:
    start = meta.get("load_at_start")
    return (
        "The load column is the 1-minute load average when each row finished. The contenders "
        f"keep about 2 tasks runnable on these {meta['machine']['cores']} cores, so a figure well "
        "above 2 means other work shared the CPU and that row's rate is understated"
        + (f" (load when the run started: {start:.1f})." if start is not None else ".")
    )


def write(rows: list[Row], meta: dict[str, Any], md: Path) -> Path:
    """Write ``md`` and the chart beside it (same name, .png); return the chart's path."""
    png = md.with_suffix(".png")
    ref = reference_rate(rows)
    lines = ["# visionq benchmarks", "", "Generated by `make bench`; do not edit by hand.", ""]
    lines += _machine(meta)
    lines += [
        "These machines are shared and noisy: compare figures from the same run, not across runs.",
        _load_note(meta),
        "",
        "## Throughput",
        "",
        f"![img/s per contender]({png.name})",
        "",
    ]
    lines += _throughput(rows, ref)
    lines += ["## Targets", "", *_targets(rows)]
    lines += ["## Precision", "", *_accuracy(rows)]
    lines += ["## Camera-sized photos (12 MP)", "", *_photos(rows)]
    lines += ["## Queue overhead at scale", "", *_scale(rows)]
    lines += ["## Cold start", "", *_coldstart(rows)]
    lines += [ABOUT, "## Reproduce", "", "```", "make bench                    # full run",
              ".venv/bin/python -m benchmarks --quick      # smoke run, ~64 images",
              ".venv/bin/python -m benchmarks --help", "```", ""]  # fmt: skip
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))
    _chart(rows, ref, png)
    log.info("wrote %s and %s", relative(md), relative(png))
    return png
