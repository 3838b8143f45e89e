#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels the GPU machine lacks into DIR (default .whl).
#
#   scripts/gpu_wheels.sh [DIR]      # ~20 MB; then carry DIR to the GPU machine (scripts/gpu_speed.sh)
#
# The GPU image (device tool's KINDS.md) has torch 2.11 + triton, numpy, scipy, scikit-learn, numba,
# pandas, safetensors, huggingface-hub 1.x, transformers 5.x, accelerate 1.15, ...: boson_multimodal
# needs transformers 4.46.x (tokenizers 0.20.x, huggingface-hub < 1), and the audio codec the packages
# below (higgs-facts.md section 1).  Versions are this repo's lock files' pins where they have one;
# liger-kernel is the optional speed switch (custom_impl.kernels).  argbind and randomname exist only
# as sdists: `pip wheel` builds them here (pure Python).  Wheels are for CPython 3.12 on x86-64.
# Put DIR in .git/info/exclude (echo /.whl/ >> .git/info/exclude) so it never gets committed.
set -euo pipefail
dest=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$dest"
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps "${platform[@]}" -d "$dest" \
    transformers==4.46.3 tokenizers==0.20.3 huggingface-hub==0.36.2 boson-multimodal==0.1.1 peft==0.17.1 \
    accelerate==1.1.1 dacite==1.9.2 loguru==0.7.3 librosa==0.11.0 soundfile==0.14.0 soxr==1.1.0 \
    audioread==3.1.0 pooch==1.9.0 decorator==5.3.1 lazy-loader==0.6 cffi==2.1.1 pycparser==3.12 \
    descript-audio-codec==1.0.0 descript-audiotools==0.7.2 vector-quantize-pytorch==1.32.0 \
    torch-einops-utils==0.2.0 einx==0.4.3 einops==0.8.2 frozendict==2.5.1 julius==0.2.8 flatten-dict==0.5.0 \
    docstring-parser==0.18.0 ffmpy==1.0.0 omegaconf==2.4.0 importlib-resources==7.1.0 \
    liger-kernel==0.8.5
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" argbind==0.3.9 randomname==0.2.1
ls "$dest" | wc -l
du -sh "$dest"
