"""Test-only fault injection for real worker processes. Never on a production path.

Put this folder on a worker's PYTHONPATH and set ``VISIONQ_FAULTS=1``: Python imports
this module at start-up in the prefork parent and, through the fork, every pool child.
It wraps ``PIL.Image.open`` and ``os.open`` so that opening a file whose name contains

* ``POISON`` SIGKILLs the calling process (a decoder crash: the child dies);
* ``HANG`` sleeps for an hour (a decoder stuck in a loop: only time limits end it);
* ``EIOMNT`` fails to open with EIO while the file VISIONQ_FAULT_EIO_FLAG names exists.

With VISIONQ_FAULT_DEAF_FLAG set, the next broker channel that starts consuming the task
queue while that file exists never polls it (and the file is removed): a consumer that
reconnects and then takes nothing, as in celery#8030 and #10205.

The worker itself stays the unmodified ``celery -A workers worker -P prefork``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

if os.environ.get("VISIONQ_FAULTS") == "1":
    from PIL import Image

    _real_open = Image.open

    def _name_of(fp: Any) -> str:
        if isinstance(fp, (str, bytes, os.PathLike)):
            return os.fsdecode(fp)
        name = getattr(fp, "name", "")
        if isinstance(name, int):  # os.fdopen(): ask the kernel which file it is
            try:
                return os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                return ""
        return str(name)

    def _faulty_open(fp: Any, *args: Any, **kwargs: Any) -> Image.Image:
        name = os.path.basename(_name_of(fp))
        if "POISON" in name:
            os.kill(os.getpid(), signal.SIGKILL)
        if "HANG" in name:
            time.sleep(3600)
        return _real_open(fp, *args, **kwargs)

    Image.open = _faulty_open

    # A mount that fails: while the file named by VISIONQ_FAULT_EIO_FLAG exists, opening
    # any path with EIOMNT in it fails with EIO, as a dead NFS or FUSE mount does.
    _eio_flag = os.environ.get("VISIONQ_FAULT_EIO_FLAG")
    if _eio_flag:
        import errno

        _real_os_open = os.open

        def _eio_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
            if "EIOMNT" in os.fsdecode(path) and os.path.exists(_eio_flag):
                raise OSError(errno.EIO, os.strerror(errno.EIO), os.fsdecode(path))
            return _real_os_open(path, flags, mode, dir_fd=dir_fd)

        os.open = _eio_open

    # A consumer connected but deaf: its channel never sends the BRPOP that fetches
    # tasks. One channel only, so a reconnect (the watchdog's remedy) cures it.
    _deaf_flag = os.environ.get("VISIONQ_FAULT_DEAF_FLAG")
    if _deaf_flag:
        from kombu.transport import redis as _kombu_redis

        _task_queue = os.environ.get("VISIONQ_QUEUE", "visionq")
        _Channel = _kombu_redis.Channel
        _real_consume = _Channel.basic_consume
        _real_brpop_start = _Channel._brpop_start

        def _consume(self: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
            if queue == _task_queue and os.path.exists(_deaf_flag):
                os.unlink(_deaf_flag)
                self._visionq_deaf = True
            return _real_consume(self, queue, *args, **kwargs)

        def _brpop_start(self: Any, timeout: Any = None) -> Any:
            if getattr(self, "_visionq_deaf", False):
                return None
            return _real_brpop_start(self, timeout)

        _Channel.basic_consume = _consume
        _Channel._brpop_start = _brpop_start
