from __future__ import annotations

import pytest

from visionq.settings import Settings, SettingsError


def test_defaults_and_derived_backend():
    s = Settings.from_env({})
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.backend_url == "redis://localhost:6379/1"
    assert s.chunk_size == 0  # self-sizing
    assert s.device == "auto" and s.weights == "imagenet" and s.precision == "fp32"


def test_environment_is_parsed_and_typed():
    s = Settings.from_env(
        {
            "VISIONQ_BROKER_URL": "redis://:pw@h:6380/3?ssl_cert_reqs=required",
            "VISIONQ_THREADS": "3",
            "VISIONQ_JPEG_DRAFT": "yes",
            "VISIONQ_DEVICE": "cuda:1",
            "VISIONQ_ALLOWED_ROOTS": "/a:/b",
        }
    )
    assert s.threads == 3 and s.jpeg_draft is True and s.device == "cuda:1"
    assert s.backend_url == "redis://:pw@h:6380/1?ssl_cert_reqs=required"
    assert s.roots == ("/a", "/b")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VISIONQ_DEVICE", "tpu"),
        ("VISIONQ_PRECISION", "int4"),
        ("VISIONQ_THREADS", "two"),
        ("VISIONQ_VISIBILITY_TIMEOUT", "0"),
        ("VISIONQ_PATH_MAP", "/no-equals-sign"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_time_limit_stays_below_visibility_timeout():
    s = Settings.from_env({"VISIONQ_VISIBILITY_TIMEOUT": "30"})
    assert s.effective_time_limit < 30
    assert Settings.from_env({}).effective_time_limit == 600


def test_path_map_longest_prefix_first():
    s = Settings.from_env({"VISIONQ_PATH_MAP": "/mnt=/data;/mnt/photos=/srv/p"})
    assert s.path_rewrites[0] == ("/mnt/photos", "/srv/p")


def test_every_setting_is_documented():
    rows = Settings.documented()
    assert all(name.startswith("VISIONQ_") and doc for name, _, doc in rows)
    assert {
        "VISIONQ_BROKER_URL",
        "VISIONQ_RESULT_BACKEND",
        "VISIONQ_DEVICE",
        "VISIONQ_WEIGHTS",
        "VISIONQ_VISIBILITY_TIMEOUT",
        "VISIONQ_ALLOWED_ROOTS",
        "VISIONQ_PRECISION",
        "VISIONQ_METRICS_PORT",
        "VISIONQ_QUEUE",
        "VISIONQ_PATH_MAP",
    } <= {r[0] for r in rows}


def test_readme_table_lists_every_setting():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name, _, _ in Settings.documented() if f"| `{name}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
