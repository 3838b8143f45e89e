"""Benchmarks: `python -m bench` (one device, both pipelines side by side) and
`python -m bench.scaling` (torchrun weak scaling)."""
