"""``visionq tune``'s torch-free half: sampling, the table, the lines to copy; the layouts."""

from __future__ import annotations

from producer.tune import Recommendation, render, sample
from workers.tune import layouts

RESULT = {
    "cores": 2,
    "images": 5,
    "tolerance": 99.0,
    "weights": "random",
    "timed_out": False,
    "rows": [
        {"children": 1, "threads": 2, "precision": "fp32", "batch": 8, "jpeg_draft": False,
         "img_s": 20.0, "agree_pct": 100.0},
        {"children": 2, "threads": 1, "precision": "fp32", "batch": 8, "jpeg_draft": False,
         "img_s": 40.0, "agree_pct": 100.0},
        {"children": 2, "threads": 1, "precision": "int8", "batch": 8, "jpeg_draft": False,
         "img_s": 150.0, "agree_pct": 80.0},
        {"children": 2, "threads": 1, "precision": "bf16", "batch": 8, "jpeg_draft": True,
         "img_s": 90.0, "agree_pct": 100.0},
    ],
    "best": {"children": 2, "threads": 1, "precision": "bf16", "batch": 8, "jpeg_draft": True},
}  # fmt: skip


def test_sample_spreads_over_the_input_and_keeps_small_inputs_whole():
    assert sample(["a", "b"], 32) == ["a", "b"]
    picked = sample([str(i) for i in range(100)], 4)
    assert picked == ["0", "25", "50", "75"]


def test_render_marks_the_pick_and_prints_lines_to_copy():
    text = render(RESULT, calibration="")
    lines = text.splitlines()
    picked = [ln for ln in lines if ln.endswith("<")]
    assert len(picked) == 1 and "bf16" in picked[0] and "on" in picked[0]
    assert "90.0 img/s (2.25x the defaults)" in text
    assert "export VISIONQ_PRECISION=bf16" in lines
    assert "export VISIONQ_JPEG_DRAFT=1" in lines
    assert "export VISIONQ_THREADS=1" in lines
    assert "celery -A workers worker -P prefork -c 2" in lines
    assert "VISIONQ_INT8_CALIBRATION" not in text


def test_int8_recommendation_names_its_calibration_folder(tmp_path):
    rec = Recommendation(children=2, threads=1, precision="int8", batch=8, jpeg_draft=False)
    env = rec.env(str(tmp_path))
    assert env["VISIONQ_INT8_CALIBRATION"] == str(tmp_path)
    assert env["VISIONQ_JPEG_DRAFT"] == "0"


def test_layouts_use_every_core_once():
    assert layouts(1) == [(1, 1)]
    assert layouts(2) == [(1, 2), (2, 1)]
    assert layouts(8) == [(1, 8), (2, 4), (4, 2), (8, 1)]
    assert layouts(6) == [(1, 6), (2, 3), (6, 1)]
