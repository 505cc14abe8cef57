"""``make bench-gpu``: what one GPU does with visionq, against an in-process GPU loop.

Measures, on one CUDA device, within a time budget (default 8 minutes):

* an in-process loop with CPU decoding (a DataLoader with enough workers to feed it);
* the same loop with batched nvJPEG decoding on the device, and at bf16 and fp16;
* visionq with 1 GPU and 2, 4 and 8 children, each decoding on the CPU and on the GPU;
* visionq with GPU decoding at bf16 and fp16.

Each row carries its top-1 agreement with the exact path (Pillow decoding, fp32 forward
on the same device). Writes ``docs/benchmarks-gpu.md``. On a host without CUDA it says so
and exits 0; ``--device cpu`` runs the same plumbing on the CPU (for tests, not figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks import corpus
from benchmarks.layout import BENCH_DIR, ROOT
from benchmarks.model import decode, ensure_weights, load_model, preprocess
from benchmarks.procs import kill_group, spawn
from benchmarks.redis_server import private_redis
from benchmarks.visionq_cli import Worker

if TYPE_CHECKING:
    from workers.gpu_decode import Encoded

log = logging.getLogger("benchmarks.gpu")

DEFAULT_REPORT = ROOT / "docs" / "benchmarks-gpu.md"
GPU_CORPUS = BENCH_DIR / "corpus-gpu"
BATCH = 128


@dataclass
class Row:
    group: str
    name: str
    images: int = 0
    seconds: float = 0.0
    agreement: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass
class Plan:
    device: str
    images: int
    batch: int
    children: list[int]
    budget_s: float
    loader_workers: int
    weights: Path
    paths: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


# -- corpus ------------------------------------------------------------------------------


def _build_one(args: tuple[int, str]) -> None:
    index, folder = args
    target = Path(folder) / corpus.image_name(index)
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        corpus.make_image(index).save(tmp, format="JPEG", quality=corpus.JPEG_QUALITY)
        os.replace(tmp, target)


def build_corpus(count: int, folder: Path, procs: int) -> list[Path]:
    """The bench corpus's first ``count`` images, built in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(i, str(folder)) for i in range(count)]
    if procs > 1:
        with ProcessPoolExecutor(procs) as pool:
            list(pool.map(_build_one, todo, chunksize=32))
    else:
        for item in todo:
            _build_one(item)
    return [folder / corpus.image_name(i) for i in range(count)]


# -- in-process loops --------------------------------------------------------------------


class _Decoded(Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.transform = preprocess()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode(self.paths[i], self.transform)


class _Raw(Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        return self.paths[i].read_bytes()


def _as_list(items: list[bytes]) -> list[bytes]:
    return items


def _loader(ds: Dataset, plan: Plan, raw: bool) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=plan.batch,
        num_workers=plan.loader_workers,
        pin_memory=plan.device.startswith("cuda") and not raw,
        collate_fn=_as_list if raw else None,
        persistent_workers=False,
        prefetch_factor=4 if plan.loader_workers else None,
    )


def _encoded(raw: bytes) -> Encoded:
    from workers.gpu_decode import Encoded

    return Encoded(torch.frombuffer(bytearray(raw), dtype=torch.uint8), "-")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def in_process(
    plan: Plan, model: torch.nn.Module, *, gpu_decode: bool, dtype: torch.dtype | None
) -> tuple[float, list[int]]:
    """Seconds for one pass over the corpus, and the top-1 of each image in order."""
    from workers.gpu_decode import GpuDecoder
    from workers.preprocess import Preprocessor

    decoder = GpuDecoder(plan.device, Preprocessor(max_pixels=89_478_485)) if gpu_decode else None
    ds: Dataset = _Raw(plan.paths) if gpu_decode else _Decoded(plan.paths)
    tops: list[int] = []
    autocast = (
        torch.autocast(torch.device(plan.device).type, dtype=dtype)
        if dtype is not None
        else torch.autocast(torch.device(plan.device).type, enabled=False)
    )
    _sync(plan.device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for batch in _loader(ds, plan, raw=gpu_decode):
            if decoder is not None:
                decoded = decoder.materialize([_encoded(b) for b in batch])
                x = torch.stack(decoded)  # type: ignore[arg-type]
            else:
                x = batch.to(plan.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            tops.append(model(x).argmax(1))
    result = torch.cat(tops).tolist()  # one sync at the end, not one per batch
    return time.perf_counter() - start, result


def forward_only(plan: Plan, model: torch.nn.Module, dtype: torch.dtype | None) -> float:
    """Images/s of the forward pass alone, on a pre-made batch: the device's ceiling."""
    x = torch.randn(plan.batch, 3, 224, 224, device=plan.device)
    x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(torch.device(plan.device).type, dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), ctx:
        for _ in range(3):
            model(x)
        _sync(plan.device)
        steps = 20 if plan.device.startswith("cuda") else 1
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        _sync(plan.device)
    return steps * plan.batch / (time.perf_counter() - start)


def agreement(tops: Sequence[int], reference: Sequence[int]) -> float:
    same = sum(a == b for a, b in zip(tops, reference, strict=True))
    return same / len(reference) if reference else 0.0


# -- visionq ---------------------------------------------------------------------------


def _env(server_url: Callable[[int], str], plan: Plan, decode_on: str, precision: str,
         state: str) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(
        VISIONQ_BROKER_URL=server_url(0),
        VISIONQ_RESULT_BACKEND=server_url(1),
        VISIONQ_WEIGHTS=str(plan.weights),
        VISIONQ_PRECISION=precision,
        VISIONQ_DEVICE=plan.device if plan.device == "cpu" else "cuda",
        VISIONQ_DECODE=decode_on,
        VISIONQ_BATCH_SIZE=str(plan.batch),
        # A chunk per batch, so each forward pass is full (batches never cross chunks).
        VISIONQ_CHUNK_SIZE=str(plan.batch),
        VISIONQ_STATE_DIR=state,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


def visionq_run(
    plan: Plan, children: int, decode_on: str, precision: str, reference: Sequence[int],
    workdir: Path,
) -> Row:  # fmt: skip
    """A prefork worker on the device; one warm-up job, then one timed job of the corpus."""
    from producer.client import Client

    name = f"visionq {children} children, {decode_on} decoding, {precision}"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as state, private_redis() as server:
        env = _env(server.url, plan, decode_on, precision, state)
        log_path = workdir / f"worker-{children}-{decode_on}-{precision}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-P", "prefork",
               "-c", str(children), "--loglevel=INFO", "-n", "benchgpu@%h"]  # fmt: skip
        with open(log_path, "wb") as out:
            proc = spawn(cmd, env=env, stdout=out)
        handle = Worker(proc, log_path, time.monotonic())
        try:
            handle.wait_ready(children, timeout=min(180.0, max(30.0, plan.left())))
            ready_s = handle.ready[-1].seconds
            keys = [str(p.resolve()) for p in plan.paths]
            from visionq.settings import Settings

            settings = Settings.from_env(env)
            with Client(settings=settings) as client:
                warm = client.submit(keys[: plan.batch * children], chunk_size=plan.batch)
                list(warm.results(timeout=120))
                start = time.perf_counter()
                job = client.submit(keys, chunk_size=plan.batch)
                found: dict[str, int] = {}
                errors = 0
                ran: set[str] = set()
                for rec in job.results(timeout=max(60.0, plan.left())):
                    ran.add(str(rec.get("precision")))
                    if rec.get("ok"):
                        found[rec["path"]] = int(rec["top_k"][0]["index"])
                    else:
                        errors += 1
                seconds = time.perf_counter() - start
        finally:
            kill_group(proc, grace=10.0)
    tops = [found.get(k, -1) for k in keys]
    note = f"children ready {ready_s:.1f} s after launch; ran {','.join(sorted(ran))}"
    if errors:
        note += f"; {errors} errors"
    return Row("visionq", name, len(found), seconds, agreement(tops, reference), note)


# -- report ------------------------------------------------------------------------------


def machine_lines(device: str) -> list[str]:
    lines = [
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores",
    ]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs; cuDNN TF32 convolutions "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (PyTorch's default)"
        )
    return lines


def render(plan: Plan, rows: Sequence[Row], ceilings: dict[str, float], notes: Sequence[str]
           ) -> str:  # fmt: skip
    out = [
        "# visionq on one GPU",
        "",
        "Written by `make bench-gpu` (`python -m benchmarks.gpu`). ResNet-18 with seeded",
        "random-init weights, the bench corpus's 300-500 px JPEGs "
        f"({len(plan.paths)} images), batch {plan.batch}, chunks of {plan.batch} paths.",
        "Agreement is top-1 against the exact path (Pillow decoding, fp32 forward on the",
        "same device); random weights give nearly flat probabilities, so it is a",
        "lower bound for real weights.",
        "",
        *machine_lines(plan.device),
        f"- DataLoader workers for CPU decoding: {plan.loader_workers}",
        "",
        "| group | contender | images | seconds | img/s | top-1 agreement | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        agree = f"{100 * r.agreement:.1f}%" if r.agreement is not None else "-"
        out.append(
            f"| {r.group} | {r.name} | {r.images} | {r.seconds:.2f} | {r.rate:.0f} | {agree} "
            f"| {r.note} |"
        )
    if ceilings:
        out += ["", "Forward pass alone (pre-made batch on the device, no decoding):", ""]
        out += [f"- {k}: {v:.0f} img/s" for k, v in ceilings.items()]
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


# -- driver ------------------------------------------------------------------------------


def run(plan: Plan, workdir: Path) -> tuple[list[Row], dict[str, float], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    model = load_model(plan.weights).to(plan.device, memory_format=torch.channels_last)
    on_cuda = plan.device.startswith("cuda")
    reduced = {"bf16": torch.bfloat16, "fp16": torch.float16} if on_cuda else {}
    ceilings = {"fp32": forward_only(plan, model, None)}
    for name, dt in reduced.items():
        ceilings[name] = forward_only(plan, model, dt)
    # The exact path; its first pass also warms the DataLoader's imports and cuDNN.
    in_process(plan, model, gpu_decode=False, dtype=None)
    seconds, reference = in_process(plan, model, gpu_decode=False, dtype=None)
    rows.append(Row("in-process", f"CPU decoding ({plan.loader_workers} DataLoader workers), "
                    "fp32", len(reference), seconds, 1.0, "the exact path"))  # fmt: skip
    for name, dt in [("fp32", None), *reduced.items()]:
        in_process(plan, model, gpu_decode=True, dtype=dt)  # warm nvJPEG and kernels
        seconds, tops = in_process(plan, model, gpu_decode=True, dtype=dt)
        rows.append(Row("in-process", f"GPU decoding, {name}", len(tops), seconds,
                        agreement(tops, reference)))  # fmt: skip
    del model
    if on_cuda:
        torch.cuda.empty_cache()
    runs = [(n, d, "fp32") for n in plan.children for d in ("cpu", "gpu")]
    if plan.children and on_cuda:
        mid = plan.children[len(plan.children) // 2]
        runs += [(mid, "gpu", p) for p in (*reduced, "auto")]
    for children, decode_on, precision in runs:
        if plan.left() < 30:
            notes.append(f"skipped visionq {children} children {decode_on} {precision}: "
                         "out of time budget")  # fmt: skip
            continue
        try:
            rows.append(visionq_run(plan, children, decode_on, precision, reference, workdir))
        except Exception as exc:  # one failed run must not lose the report
            log.exception("visionq run failed")
            rows.append(
                Row(
                    "visionq",
                    f"visionq {children} children, {decode_on} decoding, {precision}",
                    note=f"failed: {type(exc).__name__}: {exc}"[:200],
                )
            )
        log.info("%s", rows[-1])
    return rows, ceilings, notes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (plumbing only)")
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--children", default="2,4,8", help="visionq pool sizes to measure")
    p.add_argument("--budget", type=float, default=420.0, help="seconds; later runs are skipped")
    p.add_argument("--loader-workers", type=int, default=0, help="0: cores - 2")
    p.add_argument("--corpus", type=Path, default=GPU_CORPUS)
    p.add_argument("--out", type=Path, default=DEFAULT_REPORT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench-gpu: no CUDA device on this host; nothing measured (use a GPU host).")
        return 0
    cores = os.cpu_count() or 1
    plan = Plan(
        device=args.device,
        images=args.images,
        batch=args.batch,
        children=[int(c) for c in args.children.split(",") if c.strip()],
        budget_s=args.budget,
        loader_workers=args.loader_workers or max(1, cores - 2),
        weights=ensure_weights(BENCH_DIR / "weights.pt"),
    )
    plan.paths = build_corpus(args.images, args.corpus, procs=min(cores, 16))
    log.info("corpus ready: %d images (%.0f s)", len(plan.paths), time.monotonic() - plan.started)
    workdir = BENCH_DIR / "gpu"
    workdir.mkdir(parents=True, exist_ok=True)
    rows, ceilings, notes = run(plan, workdir)
    text = render(plan, rows, ceilings, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (workdir / "rows.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
