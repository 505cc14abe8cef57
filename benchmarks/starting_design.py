"""The starting design, kept as a blog post wrote it: torch.multiprocessing inference.

Run as ``python -m benchmarks.starting_design METHOD MANIFEST WEIGHTS``. Its defects are
deliberate and are what the benchmark measures: the model runs once in the parent before
the workers start (with ``fork`` this breaks the children's OpenMP pool), every worker keeps
the default torch thread count, images go one at a time, and ``queue.empty()`` followed by
``queue.get()`` can race at the end of the queue. Progress goes to stdout, one line per image,
so a harness can count finished images even when the run hangs.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.multiprocessing as mp

from benchmarks.model import decode, load_model, preprocess

START_MARKER = "START"
DONE_PREFIX = "DONE "


def worker(model: torch.nn.Module, queue: mp.Queue, results: mp.Queue) -> None:
    transform = preprocess()
    while not queue.empty():
        path = queue.get()
        x = decode(path, transform).unsqueeze(0)
        with torch.no_grad():
            out = model(x)
        results.put((path, int(out.argmax(1).item())))


def main(argv: list[str]) -> int:
    method, manifest, weights = argv
    mp.set_start_method(method)
    with open(manifest) as f:
        paths = f.read().split()

    model = load_model(weights)
    model.share_memory()
    # The post's sanity check: one forward pass in the parent. This is the line that
    # makes forked children hang, because torch's thread pool is already running.
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))

    queue: mp.Queue = mp.Queue()
    for path in paths:
        queue.put(path)
    results: mp.Queue = mp.Queue()

    print(START_MARKER, time.time(), flush=True)
    procs = [
        mp.Process(target=worker, args=(model, queue, results)) for _ in range(os.cpu_count() or 1)
    ]
    for p in procs:
        p.start()
    for _ in paths:
        path, label = results.get()
        print(f"{DONE_PREFIX}{path} {label}", flush=True)
    for p in procs:
        p.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
