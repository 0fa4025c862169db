"""Benchmarks (`python -m isa4d.bench.<name>`); results go to `experiments/bench/`."""
