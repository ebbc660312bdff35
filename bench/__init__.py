"""Benchmarks: one script per measurement (`python -m bench.<name>`), each writing bench/results/<name>.json."""
