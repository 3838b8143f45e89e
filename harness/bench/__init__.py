"""Benchmarks: `python -m harness.bench` (one device, both pipelines side by side) and
`python -m harness.bench.scaling` (torchrun weak scaling)."""
