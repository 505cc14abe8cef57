"""Images that fit the pixel limit but not the memory it implies, in a real worker.

A 16-bit PNG of ~0.3 MB at 95% of VISIONQ_MAX_IMAGE_PIXELS must be classified with a
bounded peak in the pool child (it once took ~20 bytes per pixel through int64 arrays);
a 32-bit TIFF of the same size is refused from its header as a decompression bomb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import RedisTarget
from tests.integration.harness import pool_children
from tests.integration.ops_helpers import run_job
from visionq.schema import ErrorType

pytestmark = pytest.mark.integration

W, H = 8000, 5000  # 40 Mpx
LIMIT = 42_000_000


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_sixteen_bit_png_near_the_limit_costs_bounded_memory(
    clean_redis: RedisTarget, start_worker, tmp_path: Path
):
    ramp = (np.arange(W, dtype=np.uint32) * 8 % 65536).astype(np.uint16)
    png16 = tmp_path / "ramp16.png"
    Image.fromarray(np.tile(ramp, (H, 1))).save(png16)
    tif32 = tmp_path / "flat32.tif"
    Image.new("I", (W, H), 70000).save(tif32, compression="tiff_deflate")
    assert png16.stat().st_size < 2 << 20

    worker = start_worker(concurrency=1, VISIONQ_MAX_IMAGE_PIXELS=str(LIMIT))
    (child,) = pool_children(worker.proc.pid)
    before = max(vm_kib(child, "VmHWM"), vm_kib(child, "VmRSS"))

    records = run_job(clean_redis, [str(png16), str(tif32)], tmp_path / "state", chunk_size=1)
    by_name = {Path(r["path"]).name: r for r in records}
    assert by_name["ramp16.png"]["ok"], by_name["ramp16.png"]
    bomb = by_name["flat32.tif"]
    assert not bomb["ok"] and bomb["error"]["type"] == ErrorType.DECOMPRESSION_BOMB
    assert "VISIONQ_MAX_IMAGE_PIXELS" in bomb["error"]["message"]

    grew_mib = (vm_kib(child, "VmHWM") - before) / 1024
    print(f"FIGURE 16-bit PNG {W}x{H}: child peak grew {grew_mib:.0f} MiB")
    # 7 bytes per pixel now (~270 MiB); the int64 path took ~20 (~760 MiB).
    assert grew_mib < 450, f"the child's peak grew {grew_mib:.0f} MiB for one 40 Mpx image"
