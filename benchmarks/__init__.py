"""Benchmarks for visionq: a fixed corpus, in-process baselines and the real system end to end.

Run with ``python -m benchmarks`` (``make bench``); ``--help`` lists the options.
"""
