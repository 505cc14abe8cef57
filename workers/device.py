"""Which device and how many torch threads a pool child gets.

Pure functions of their inputs, so the mapping is testable without GPUs: the caller
(the child, after the fork) asks torch how many GPUs there are and passes the count in.
Asking in the parent would initialise CUDA before the fork (pytorch#40403, #68861).
"""

from __future__ import annotations

from dataclasses import dataclass

from visionq.settings import SettingsError


class DeviceError(SettingsError):
    """The requested device does not exist on this host."""


@dataclass(frozen=True)
class Placement:
    device: str  # "cpu" or "cuda:N"
    threads: int  # torch intra-op threads for this child

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def place(
    spec: str,
    child_index: int,
    *,
    concurrency: int,
    cuda_count: int,
    cores: int,
    threads: int = 0,
) -> Placement:
    """Place pool child ``child_index`` (0-based) of ``concurrency`` children.

    With k GPUs child i gets ``cuda:(i mod k)``; ``cuda:N`` pins every child to GPU N.
    On the CPU each child gets ``max(1, cores // concurrency)`` threads unless
    ``threads`` overrides it, so children x threads never oversubscribe the cores
    (transformers#7516, serve#1138).
    """
    if spec == "auto":
        spec = "cuda" if cuda_count > 0 else "cpu"
    if spec == "cpu":
        n = threads if threads > 0 else max(1, cores // max(1, concurrency))
        return Placement("cpu", n)
    if cuda_count <= 0:
        raise DeviceError(f"VISIONQ_DEVICE={spec} but torch sees no CUDA device on this host")
    if spec == "cuda":
        gpu = child_index % cuda_count
    else:
        gpu = int(spec.partition(":")[2])
        if gpu >= cuda_count:
            raise DeviceError(
                f"VISIONQ_DEVICE={spec} but this host has {cuda_count} GPU(s): "
                + ", ".join(f"cuda:{i}" for i in range(cuda_count))
            )
    # A GPU child needs threads only for decoding glue; one or two keep the CPU free
    # for its siblings.
    return Placement(f"cuda:{gpu}", threads if threads > 0 else 1)


def default_batch_size(placement: Placement, configured: int) -> int:
    if configured > 0:
        return configured
    return 64 if placement.is_cuda else 8
