"""Benchmarks: one script per measurement (`python -m bench.<name>`), each writing bench/results/<name>.json.

``bench/common.py`` holds what every script does alike (a served subprocess, the machine, the result file).
"""
