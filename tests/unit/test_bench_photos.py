"""The 12 MP photo group of ``make bench``: its photos, agreement, report section, targets."""

from __future__ import annotations

import numpy as np

from benchmarks import photos, report, targets
from benchmarks.results import Row


def test_photos_are_camera_sized_noisy_jpegs(tmp_path):
    (path,) = photos.build(1, tmp_path)
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "JPEG" and sorted(im.size) == [3024, 4032]
    # Sensor-like noise makes a camera-sized file, not a smooth 300 kB one.
    assert path.stat().st_size > 1_500_000
    assert photos.build(1, tmp_path) == [path]  # cached, not rebuilt


def test_top1_agreement_counts_only_images_that_came_back():
    exact = np.eye(3, 5)  # top-1: 0, 1, 2
    found = {"a": [(0, 0.9)], "b": [(4, 0.5)]}
    assert photos.top1_agreement(found, ["a", "b", "c"], exact) == 50.0
    assert photos.top1_agreement({}, ["a"], exact) is None


def _rows() -> list[Row]:
    def row(name: str, seconds: float, agree: float) -> Row:
        return Row("photos", name, images=64, seconds=seconds, figures={"top1_agree_pct": agree})

    names = [name for name, _, _ in photos.CONTENDERS]
    return [
        row(photos.POOL_NAME, 8.0, 100.0),  # 8 img/s
        row(names[0], 8.0, 100.0),  # 1.00x
        row(names[1], 4.0, 99.0),
        row(names[3], 2.0, 93.8),  # 4.00x: the fastest opt-in
    ]


def test_report_section_shows_ratio_to_the_pool_and_agreement():
    text = "\n".join(report._photos(_rows()))
    assert "| reference pool fp32 on 12 MP photos | 8.0 | 1.00x | 100.0% |" in text
    assert "| visionq int8 + VISIONQ_JPEG_DRAFT on 12 MP photos | 32.0 | 4.00x | 93.8% |" in text
    assert report._photos([]) == ["Not measured in this run.", ""]


def test_targets_judge_the_default_and_the_fastest_opt_in():
    verdicts = {v.target: v for v in targets._photo_verdicts(_rows())}
    default = verdicts["12 MP photos: visionq fp32 >= 0.95x the pool"]
    fastest = verdicts["12 MP photos: fastest opt-in >= 3x the pool"]
    assert default.passed is True and default.measured.startswith("1.00x")
    assert fastest.passed is True and "int8 + VISIONQ_JPEG_DRAFT" in fastest.measured
    slow = [r for r in _rows() if "int8" not in r.name]
    assert targets._photo_verdicts(slow)[1].passed is False
    assert all(v.passed is None for v in targets._photo_verdicts([]))
