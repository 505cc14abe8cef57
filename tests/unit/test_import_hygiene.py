"""The prefork parent and the producer must never import torch.

A forked copy of OpenMP or CUDA state breaks the children that inherit it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["workers", "producer", "producer.cli", "producer.status", "visionq.schema"]
)
def test_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_celery_app_is_exposed_with_the_task():
    code = "import workers; print(workers.app.main, 'visionq.classify' in workers.app.tasks)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["visionq", "True"]


def test_wire_is_json_only():
    from workers import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json" and app.conf.result_serializer == "json"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost


@pytest.mark.parametrize("module", ["workers", "producer", "producer.cli", "workers.tasks"])
def test_remote_backends_load_only_when_a_url_is_read(module):
    # Their event-loop threads must never start in the Celery parent, before the fork.
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('fsspec', 's3fs', 'aiohttp', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
