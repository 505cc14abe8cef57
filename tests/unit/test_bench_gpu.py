"""``make bench-gpu``'s plumbing on the CPU: corpus, both decoding loops, agreement, report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import gpu


def test_runs_its_loops_on_the_cpu_and_writes_the_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "benchmarks-gpu.md"
    rc = gpu.main(
        ["--device", "cpu", "--images", "6", "--batch", "4", "--children", "",
         "--loader-workers", "1", "--corpus", str(tmp_path / "corpus"), "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert "| in-process | CPU decoding (1 DataLoader workers), fp32 | 6 |" in text
    assert "| in-process | GPU decoding, fp32 | 6 |" in text
    assert "the exact path" in text and "100.0%" in text
    assert len(list((tmp_path / "corpus").glob("*.jpg"))) == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.md"
    assert gpu.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not out.exists()


def test_agreement_counts_matching_top1() -> None:
    assert gpu.agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
