"""The ``visionq`` command line: submit, collect, cancel, status, run, tune.

Exit codes (documented in the README):
  0  every image has a result (bad images included, as error results)
  1  results still missing when --timeout ran out, the job was cancelled meanwhile,
     or no worker answered (status)
  2  usage error: bad flags, no input, unknown or unsealed job, a job another
     collector holds; an --out file that is locked, damaged, foreign or another
     job's (left untouched)
  3  Redis unreachable, or the embedded Redis/worker of `visionq run` failed, or the
     measuring process of `visionq tune` could not run
  4  every image has a result, but some failed because the host or the device failed
     on every attempt (HostFailure, ChunkFailed): worth re-running elsewhere
  130 interrupted
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from producer import inputs
from producer.client import Client, Job, Summary
from producer.errors import (
    BackendUnavailable,
    EmbeddedError,
    IncompleteJob,
    InputError,
    JobBusy,
    JobCancelled,
    JobNotFound,
    JobNotSealed,
    ManifestMismatch,
    OutputRefused,
)
from producer.output import check_fresh
from visionq import __version__
from visionq.protocol import InvalidJobId, validate_job_id
from visionq.schema import dumps
from visionq.settings import PRECISION_CHOICES, Settings, SettingsError

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_HOST_FAILURE = 4

log = logging.getLogger("visionq")


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


# -- argument parsing ------------------------------------------------------------------


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    p.add_argument("--from-file", metavar="FILE", help="read one path per line ('-' for stdin)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subfolders")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (5)")
    p.add_argument(
        "--chunk-size",
        type=int,
        metavar="N",
        help="paths per task (VISIONQ_CHUNK_SIZE); default: sized from the work left "
        "and the workers online",
    )
    p.add_argument("--queue", metavar="Q", help="queue to publish to (VISIONQ_QUEUE)")


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up waiting after S seconds (exit 1); default: wait",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionq",
        description="Classify images at scale with Celery workers and a warm ResNet-18.",
        epilog="Exit codes: 0 complete, 1 results missing after --timeout, 2 usage error, "
        "3 Redis or embedded stack unavailable, 4 complete but the host or device failed "
        "some images on every attempt.",
    )
    parser.add_argument("--version", action="version", version=f"visionq {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = sub.add_parser("submit", help="publish images to the workers and collect results")
    _add_inputs(p)
    p.add_argument(
        "--out", metavar="FILE", help="JSONL, or CSV if FILE ends in .csv; default: JSONL on stdout"
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="publish every chunk now, print the job id on stdout and exit; Redis then "
        "holds the whole job until `visionq collect`",
    )
    p.add_argument(
        "--resume",
        metavar="JOB_ID",
        help="finish an interrupted submit of JOB_ID: give the same inputs again",
    )
    _add_wait(p)

    p = sub.add_parser("collect", help="collect (or resume collecting) a job's results")
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--out", metavar="FILE", required=True, help="file to write or resume")
    _add_wait(p)

    p = sub.add_parser("cancel", help="cancel a job: drop its queued chunks and its keys")
    p.add_argument("job_id", metavar="JOB_ID")

    p = sub.add_parser(
        "status",
        help="list workers online, their children and the queues",
        description="Workers online with, per pool child, its device, whether its model is "
        "warm and its weights; queue depths and tasks in flight. Exit 1 if no worker answers.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument(
        "--queue", metavar="Q", help="queue to measure besides the workers' own (VISIONQ_QUEUE)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to wait for workers to answer (2)",
    )

    p = sub.add_parser(
        "tune",
        help="measure the fastest settings for this host on a sample of your images",
        description="Times children x threads, precision, batch size and fast JPEG decoding "
        "on a sample of the given images, and prints img/s and top-1 agreement with the exact "
        "fp32 path per setting, then the fastest within the tolerance as lines to copy. "
        "Needs the worker package (torch) on this host; no Redis.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subfolders")
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="images that calibrate int8 (VISIONQ_INT8_CALIBRATION); int8 is tried only with it",
    )
    p.add_argument(
        "--tolerance", type=float, default=99.0, metavar="PCT",
        help="least top-1 agreement with the exact fp32 path to recommend (99)",
    )  # fmt: skip
    p.add_argument("--budget", type=float, default=90.0, metavar="S",
                   help="seconds of measuring; later settings are skipped (90)")  # fmt: skip
    p.add_argument("--sample", type=int, default=32, metavar="N", help="images timed (32)")
    p.add_argument("--json", action="store_true", help="the measurements as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("run", help="one command: private Redis + local worker + job")
    _add_inputs(p)
    p.add_argument("--out", metavar="FILE", required=True, help="JSONL, or CSV for *.csv")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="pool children of the local worker (default: 2, or 1 on one core)",
    )
    p.add_argument("--weights", metavar="W", help="VISIONQ_WEIGHTS for the local worker")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="VISIONQ_PRECISION for the local worker",
    )
    _add_wait(p)
    return parser


# -- helpers ---------------------------------------------------------------------------


def _paths(args: argparse.Namespace) -> Iterator[str]:
    sources: list[Any] = [args.paths]
    if args.from_file:
        sources.append(inputs.read_lines(inputs.open_list(args.from_file)))
    paths = inputs.expand(itertools.chain.from_iterable(sources), recursive=args.recursive)
    first = next(paths, None)
    if first is None:
        raise UsageError("no input: give image paths, folders or --from-file")
    return itertools.chain([first], paths)


def _progress(job: Job, summary_seed: int, quiet: bool) -> tuple[Any, Any]:
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(
        total=len(job), initial=summary_seed, unit="img", file=sys.stderr, dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 5.0, desc=f"job {job.id[:8]}",
    )  # fmt: skip
    counts = {"ok": 0, "failed": 0}

    def on_chunk(records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            counts["ok" if r["ok"] else "failed"] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(len(records))

    return bar, on_chunk


def _summary(summary: Summary, out: str | None) -> str:
    errs = ", ".join(f"{k} {v}" for k, v in summary.errors.most_common())
    text = (
        f"{summary.ok + summary.failed} images: {summary.ok} ok, {summary.failed} failed"
        + (f" ({errs})" if errs else "")
        + f" in {summary.seconds:.1f} s, {summary.rate:.1f} img/s"
    )
    if summary.resumed:
        text += f"; {summary.resumed} already in the file"
    if summary.host_failures:
        text += (
            f"; {summary.host_failures} failed because the host or device failed on every "
            "attempt (exit 4)"
        )
    return text + (f" -> {out}" if out else "")


_interrupted = False


def _interrupt(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    # Raised wherever the main thread is; inside a finalizer (a redis-py pool's
    # __del__, say) Python swallows it, so the flag also stops _collect at its next
    # chunk.
    raise KeyboardInterrupt


def _unless_interrupted(
    sink: Callable[[Sequence[dict[str, Any]]], None],
) -> Callable[[Sequence[dict[str, Any]]], None]:
    def write(records: Sequence[dict[str, Any]]) -> None:
        if _interrupted:
            raise KeyboardInterrupt  # what is not collected yet waits for `visionq collect`
        sink(records)

    return write


def _to_stdout(records: Sequence[dict[str, Any]]) -> None:
    sys.stdout.write("".join(dumps(r) + "\n" for r in records))
    sys.stdout.flush()


def _collect(
    job: Job, out: str | None, args: argparse.Namespace, *, resume: bool,
    since: float | None = None,
) -> int:  # fmt: skip
    """Collect into ``out`` (stdout if None); ``since`` starts the summary's clock."""
    bar, on_chunk = _progress(job, 0, args.quiet)
    on_chunk = _unless_interrupted(on_chunk or (lambda records: None))
    try:
        if out:
            summary = job.collect(out, timeout=args.timeout, on_chunk=on_chunk, resume=resume)
        else:
            summary = job.deliver(_to_stdout, timeout=args.timeout, on_chunk=on_chunk)
    except (IncompleteJob, JobCancelled) as exc:
        if bar:
            bar.close()
        print(f"visionq: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if bar:
        bar.close()
    if _interrupted:
        raise KeyboardInterrupt
    if since is not None:
        # Rate from publishing to the last result, not from when collecting began.
        summary.seconds = time.monotonic() - since
    if not args.quiet:
        print(_summary(summary, out), file=sys.stderr)
    return EXIT_HOST_FAILURE if summary.host_failures else EXIT_OK


# -- verbs -----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    paths = _paths(args)
    job_id = validate_job_id(args.resume or uuid.uuid4().hex)
    if args.out and not args.no_wait:
        check_fresh(args.out)  # refuse a foreign or busy --out before publishing
    with Client(settings=settings) as client:
        since = time.monotonic()
        if not args.quiet:
            print(f"job {job_id}: reading inputs", file=sys.stderr)
        try:
            job = client.submit(
                paths, top_k=args.top_k, chunk_size=args.chunk_size, queue=args.queue,
                job_id=job_id, resume=bool(args.resume), wait=not args.no_wait,
            )  # fmt: skip
        except JobNotFound as exc:
            raise UsageError(str(exc)) from None
        except KeyboardInterrupt:
            print(f"visionq: job {job_id} was not fully submitted; finish it with the same "
                  f"inputs and --resume {job_id}, or `visionq cancel {job_id}`",
                  file=sys.stderr)  # fmt: skip
            raise
        if args.no_wait:
            print(job.id)
            return EXIT_OK
        if not args.quiet:
            print(f"job {job.id}: {len(job)} images", file=sys.stderr)
        return _collect(job, args.out, args, resume=False, since=since)


def cmd_collect(args: argparse.Namespace, settings: Settings) -> int:
    # Client.job checks the id before it names a file or a key.
    with Client(settings=settings) as client:
        try:
            job = client.job(args.job_id)
        except JobNotFound as exc:
            raise UsageError(str(exc)) from None
        return _collect(job, args.out, args, resume=True)


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with Client(settings=settings) as client:
        try:
            dropped = client.cancel(args.job_id)
        except JobNotFound as exc:
            raise UsageError(str(exc)) from None
    print(f"job {args.job_id} cancelled ({dropped} queued chunks dropped)", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from producer.status import gather, render

    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    with Client(settings=settings, queue=args.queue) as client:
        status = gather(client, timeout=args.timeout)
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        if not status.workers:  # stdout stays pure JSON for scripts
            print(f"visionq: no worker answered within {args.timeout:g} s", file=sys.stderr)
    else:
        print(render(status))
    # Exit 1 when nobody answers, so `visionq status` works as a liveness probe.
    return EXIT_OK if status.workers else EXIT_INCOMPLETE


# An environment string is capped at 128 KiB by Linux (MAX_ARG_STRLEN).
_MAX_ROOTS_LEN = 64 * 1024


def _run_roots(args: argparse.Namespace) -> str:
    """VISIONQ_ALLOWED_ROOTS for the worker of `visionq run`: exactly the folders and
    files it was given. A listing too long for one variable (or naming a path with the
    separator in it) is confined to the inputs' deepest common folder instead."""
    if args.from_file:
        args.paths = [*args.paths, *inputs.read_lines(inputs.open_list(args.from_file))]
        args.from_file = None
    roots = sorted({os.path.abspath(os.path.expanduser(p)) for p in args.paths})
    joined = os.pathsep.join(roots)
    if roots and (len(joined) > _MAX_ROOTS_LEN or any(os.pathsep in r for r in roots)):
        joined = os.path.commonpath(roots)
    return joined


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if os.environ.get("VISIONQ_BROKER_URL"):
        log.info("VISIONQ_BROKER_URL is set: submitting to that deployment")
        args.no_wait = False
        args.resume = None
        return cmd_submit(args, settings)
    from producer.embedded import LocalWorker, RedisServer

    roots = _run_roots(args)
    paths = _paths(args)
    check_fresh(args.out)
    children = args.workers or (2 if (os.cpu_count() or 1) > 1 else 1)
    # The private Redis listens on a unix socket in a 0700 folder with a random password
    # (see RedisServer): no other local user can read, inject or forge anything.
    with tempfile.TemporaryDirectory(prefix="visionq-run-") as tmp, RedisServer() as server:
        env = {
            "VISIONQ_BROKER_URL": server.url(0),
            "VISIONQ_RESULT_BACKEND": server.url(1),
            "VISIONQ_QUEUE": settings.queue,
            "VISIONQ_STATE_DIR": tmp,
            # The worker reads only what this command was given, whatever a task names.
            "VISIONQ_ALLOWED_ROOTS": roots,
        }
        if args.weights:
            env["VISIONQ_WEIGHTS"] = args.weights
        if args.precision:
            env["VISIONQ_PRECISION"] = args.precision
        local = settings.replace(
            broker_url=server.url(0), result_backend=server.url(1), state_dir=tmp
        )
        worker = LocalWorker(
            env, concurrency=children, name="visionq-run@%h",
            extra_args=("--without-gossip", "--without-mingle"),
            log_path=os.path.join(tmp, "worker.log"),
        )  # fmt: skip
        with worker, Client(settings=local) as client:
            since = time.monotonic()
            job = client.submit(paths, top_k=args.top_k, chunk_size=args.chunk_size)
            if not args.quiet:
                print(f"job {job.id}: {len(job)} images; starting {children} local "
                      "worker children", file=sys.stderr)  # fmt: skip
            worker.wait_ready()
            return _collect(job, args.out, args, resume=False, since=since)


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from producer import tune

    paths = tune.sample(inputs.expand(args.paths, recursive=args.recursive), args.sample)
    if not paths:
        raise UsageError("no input: give image files or folders to tune on")
    calibration = args.calibration or settings.int8_calibration
    try:
        result = tune.measure(
            paths,
            weights=settings.weights,
            calibration=calibration,
            tolerance=args.tolerance,
            budget=args.budget,
            quiet=args.quiet or args.json,
        )
    except tune.TuneFailed as exc:
        print(f"visionq tune: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        best = tune.Recommendation(**result["best"])
        print(json.dumps({**result, "env": best.env(calibration)}, indent=2))
    else:
        print(tune.render(result, calibration))
    return EXIT_OK


VERBS = {
    "submit": cmd_submit,
    "collect": cmd_collect,
    "cancel": cmd_cancel,
    "status": cmd_status,
    "run": cmd_run,
    "tune": cmd_tune,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # SIGTERM unwinds like Ctrl-C, so `visionq run` stops what it started. A SIGINT that
    # the parent chose to ignore (nohup, background jobs) stays ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        if getattr(args, "top_k", 1) < 1 or (getattr(args, "chunk_size", None) or 1) < 1:
            raise UsageError("--top-k and --chunk-size must be at least 1")
        settings = Settings.from_env()
        return VERBS[args.verb](args, settings)
    except (UsageError, SettingsError, FileNotFoundError, InputError, InvalidJobId) as exc:
        parser.error(str(exc))
    except (OutputRefused, JobBusy, JobNotSealed, ManifestMismatch) as exc:
        # Nothing was changed; say why, without a usage dump.
        print(f"visionq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BackendUnavailable, EmbeddedError) as exc:
        print(f"visionq: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print("visionq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
