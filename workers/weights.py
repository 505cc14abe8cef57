"""The ImageNet weights file: where it lives, how it is checked, how it is fetched.

A ``.pth`` file is a pickle, and a pickle can run any code when loaded. The cache
folder it sits in (``$TORCH_HOME/hub/checkpoints``) is often shared or writable by
others (a compose volume mounted into every replica), so the file is never trusted:

* it is loaded with ``torch.load(weights_only=True)``, which unpickles tensors and
  plain containers only and refuses everything else (no ``__reduce__`` runs);
* its SHA-256 must start with the prefix torchvision publishes in the file name
  (``resnet18-f37072fd.pth``), torch.hub's ``check_hash`` convention;
* the weights id that every result carries is derived from the file's content.

Fetching is a separate step (``python -m workers.weights``, ``make weights``, the
compose ``weights`` service): the only writer of the cache. Workers only read it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys

IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET_FILE = os.path.basename(IMAGENET_URL)
# torch.hub's convention (hub.HASH_REGEX): <name>-<sha256 prefix>.<ext>
_HASH_RE = re.compile(r"-([a-f0-9]+)\.")


class WeightsError(Exception):
    """The weights file is missing, altered or not a plain state_dict."""


def hub_dir() -> str:
    """torch.hub's cache folder (``$TORCH_HOME/hub``), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return os.path.join(os.path.expanduser(torch_home), "hub")


def imagenet_path() -> str:
    """Where torchvision's cache keeps the IMAGENET1K_V1 file."""
    return os.path.join(hub_dir(), "checkpoints", IMAGENET_FILE)


def published_prefix(name: str) -> str:
    match = _HASH_RE.search(os.path.basename(name))
    if not match:
        raise WeightsError(f"{name} carries no hash in its name")
    return match.group(1)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str, prefix: str) -> str:
    """The file's SHA-256, or WeightsError if it does not start with ``prefix``."""
    digest = sha256(path)
    if not digest.startswith(prefix):
        raise WeightsError(
            f"{path} does not match its published hash: sha256 {digest[:16]}..., expected "
            f"{prefix}...; the file was altered or replaced. Delete it and fetch it again "
            "(make weights, or python -m workers.weights)"
        )
    return digest


def load_state(path: str) -> dict:
    """A state_dict loaded without running any code the file may carry."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path} is not a plain state_dict and was refused unopened by "
            f"torch.load(weights_only=True): {exc}"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_imagenet(path: str | None = None) -> tuple[dict, str]:
    """The checked ImageNet state_dict and its id (``imagenet1k_v1-<sha256 prefix>``)."""
    path = path or imagenet_path()
    if not os.path.isfile(path):
        raise WeightsError(
            f"the ImageNet weights are not at {path}. Fetch them once with `make weights` "
            f"or `python -m workers.weights` (the compose `weights` service does this), or "
            f"copy {IMAGENET_FILE} (from {IMAGENET_URL}) there; TORCH_HOME moves the cache"
        )
    digest = verify(path, published_prefix(IMAGENET_FILE))
    return load_state(path), f"imagenet1k_v1-{digest[:8]}"


def fetch(dest: str | None = None) -> str:
    """Download the ImageNet weights unless a verified copy is there; returns the path.

    torch.hub writes to a temporary file, checks the hash prefix and only then moves
    it into place, so a failed or altered download never becomes the cached file.
    """
    import torch.hub

    dest = dest or imagenet_path()
    prefix = published_prefix(IMAGENET_FILE)
    if os.path.isfile(dest):
        try:
            verify(dest, prefix)
            return dest
        except WeightsError:
            os.remove(dest)  # altered: replace it with the published file
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        torch.hub.download_url_to_file(IMAGENET_URL, dest, hash_prefix=prefix, progress=False)
    except RuntimeError as exc:  # torch.hub's hash mismatch
        raise WeightsError(f"download of {IMAGENET_URL} failed its hash check: {exc}") from None
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m workers.weights [--check]``: fetch (or only check) the cached file.

    Exit 0 when a verified file is in place, 1 when the file is altered or refused,
    2 when it cannot be downloaded (offline).
    """
    from visionq.settings import Settings

    args = sys.argv[1:] if argv is None else argv
    spec = Settings.from_env().weights
    if spec != "imagenet":
        print(f"VISIONQ_WEIGHTS={spec}: no ImageNet weights to fetch")
        return 0
    try:
        if "--check" in args:
            load_imagenet()
            print(f"ok: {imagenet_path()}")
            return 0
        print(fetch())
        return 0
    except WeightsError as exc:
        print(f"visionq weights: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # urllib's URLError is an OSError: offline
        print(f"visionq weights: cannot download {IMAGENET_URL}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
