"""Benchmarks of every performance goal, side by side: `python -m bench [--quick]` (see bench/__main__.py)."""
