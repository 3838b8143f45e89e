#!/usr/bin/env bash
# Download the pinned packages the GPU machine lacks into .whl/ (ignored; carried with `carry: [".whl"]`).
#
# The lent GPU machine has torch 2.11 + transformers 5.x, too new for boson_multimodal, and no
# internet: these wheels (versions from requirements*.lock, Python 3.12 manylinux) are installed
# there with `pip install --no-deps --target /tmp/site .whl/*.whl` and PYTHONPATH=/tmp/site.
# liger-kernel is the optional speed switch (custom_impl.kernels); not in the locks.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pin() { grep -hiE "^$1==" requirements.lock requirements-no-deps.lock | head -1 | cut -d' ' -f1; }
pkgs=(transformers tokenizers huggingface-hub peft accelerate librosa soundfile soxr audioread pooch decorator lazy-loader
      dacite loguru vector-quantize-pytorch torch-einops-utils einx frozendict omegaconf cffi
      pycparser boson-multimodal descript-audio-codec descript-audiotools docstring-parser ffmpy flatten-dict
      importlib-resources msgpack jsonschema jsonschema-specifications referencing rpds-py attrs einops liger-kernel)
for p in "${pkgs[@]}"; do
    spec=$(pin "$p"); spec=${spec:-$p}
    python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl "$spec" 2>/dev/null \
        || python3 -m pip wheel -q --no-deps -w .whl "$spec"
done
# sdists only: build pure-python wheels here (antlr4 4.9.3 is what omegaconf needs; not in the locks)
python3 -m pip wheel -q --no-deps -w .whl "$(pin argbind)" "$(pin randomname)" "$(pin julius)" antlr4-python3-runtime==4.9.3
ls .whl | wc -l; du -sh .whl
