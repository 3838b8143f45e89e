#!/usr/bin/env bash
# Kept for old instructions: the wheels the GPU machine lacks are built by scripts/gpu_wheels.py
# (through `scripts/gpu.sh --prepare SUITE`, docs/gpu.md), into .gpu-wheels/ by default.
echo "scripts/gpu_wheels.sh: use scripts/gpu.sh --prepare SUITE (docs/gpu.md); building into ${1:-.gpu-wheels}" >&2
exec python3 "$(dirname "$0")/gpu_wheels.py" --out "${1:-.gpu-wheels}"
