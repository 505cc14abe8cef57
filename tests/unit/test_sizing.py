"""Chunk sizes and the window: guided self-scheduling within batch and time bounds."""

from __future__ import annotations

from producer.sizing import MAX_CHUNK, Fleet, Sizer


def _plan(total: int, sizer: Sizer) -> list[int]:
    sizes, left = [], total
    while left:
        size = sizer.next_size(left)
        sizes.append(size)
        left -= size
    return sizes


def test_big_first_small_last_and_whole_batches():
    sizer = Sizer()
    sizer.fleet = Fleet(children=2, batch=8)
    sizer.observe(100, 4.0)  # 40 ms an image: 20 s of work is 500 images
    sizes = _plan(1000, sizer)
    assert sum(sizes) == 1000
    assert sizes[0] == 256 and sizes == sorted(sizes, reverse=True)
    assert sizes[-1] <= 8 and all(s % 8 == 0 for s in sizes[:-1])


def test_gpu_batches_fill():
    sizer = Sizer()
    sizer.fleet = Fleet(children=4, batch=64)
    sizer.observe(64, 0.05)
    assert all(s % 64 == 0 for s in _plan(100_000, sizer)[:-1])


def test_time_bound_keeps_slow_images_in_short_chunks():
    sizer = Sizer(chunk_seconds=20)
    sizer.fleet = Fleet(children=2, batch=8)
    sizer.observe(10, 5.0)  # camera photos, 0.5 s each: 40 per 20 s
    assert sizer.next_size(1_000_000) == 40


def test_cheap_paths_reach_the_cap_and_the_prior_is_cautious():
    sizer = Sizer()
    assert sizer.next_size(10_000_000) == 200  # nothing measured yet: 0.1 s an image
    sizer.observe(8192, 0.1)
    assert sizer.next_size(10_000_000) == MAX_CHUNK


def test_fixed_size_and_window():
    sizer = Sizer(fixed=16)
    assert _plan(40, sizer) == [16, 16, 8]
    sizer.fleet = Fleet(children=6, batch=8)
    assert sizer.window() == 13
    assert Sizer(window=3).window() == 3
