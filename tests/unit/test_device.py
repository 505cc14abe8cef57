from __future__ import annotations

import pytest

from workers.device import DeviceError, Placement, default_batch_size, place


@pytest.mark.parametrize("gpus", [1, 2, 3, 4])
def test_children_round_robin_over_gpus(gpus):
    devices = [place("cuda", i, concurrency=8, cuda_count=gpus, cores=16).device for i in range(8)]
    assert devices == [f"cuda:{i % gpus}" for i in range(8)]


def test_auto_picks_cuda_when_present_else_cpu():
    assert place("auto", 3, concurrency=4, cuda_count=2, cores=8).device == "cuda:1"
    assert place("auto", 3, concurrency=4, cuda_count=0, cores=8) == Placement("cpu", 2)


@pytest.mark.parametrize(
    ("cores", "children", "threads"), [(2, 2, 1), (8, 2, 4), (2, 4, 1), (16, 3, 5), (1, 1, 1)]
)
def test_cpu_threads_never_oversubscribe(cores, children, threads):
    p = place("cpu", 0, concurrency=children, cuda_count=0, cores=cores)
    assert p.threads == threads
    assert p.threads * children <= max(cores, children)


def test_thread_override_wins():
    assert place("cpu", 0, concurrency=2, cuda_count=0, cores=2, threads=3).threads == 3


def test_pinned_gpu_and_errors():
    assert place("cuda:1", 5, concurrency=8, cuda_count=2, cores=8).device == "cuda:1"
    with pytest.raises(DeviceError, match="cuda:0, cuda:1"):
        place("cuda:2", 0, concurrency=1, cuda_count=2, cores=8)
    with pytest.raises(DeviceError, match="no CUDA"):
        place("cuda", 0, concurrency=1, cuda_count=0, cores=8)


def test_default_batch_size_by_device():
    assert default_batch_size(Placement("cpu", 1), 0) == 8
    assert default_batch_size(Placement("cuda:0", 1), 0) == 64
    assert default_batch_size(Placement("cuda:0", 1), 16) == 16
