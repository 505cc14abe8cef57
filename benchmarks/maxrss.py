"""Run a command, report its wall time and peak RSS: ``python -m benchmarks.maxrss OUT -- CMD``.

Measuring from the benchmark process itself would be wrong: Linux carries a forked child's
pre-exec peak into ``ru_maxrss``, so any command started from a process that holds torch would
appear to use hundreds of MB. This launcher is small, so the child it forks starts small.
It imports nothing heavy for the same reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    report, sep, *cmd = argv
    if sep != "--" or not cmd:
        print("usage: python -m benchmarks.maxrss REPORT -- CMD...", file=sys.stderr)
        return 2
    started = time.monotonic()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    with open(report, "w") as f:
        json.dump({"returncode": code, "seconds": seconds, "max_rss_kb": usage.ru_maxrss}, f)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
