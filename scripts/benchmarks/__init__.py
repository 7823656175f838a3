"""Benchmark suites for scripts/bench.py; each module exposes run(repeats, device, quick) -> dict."""
