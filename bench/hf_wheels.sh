#!/usr/bin/env bash
# Download transformers and the wheels it needs that the offline GPU machines lack into
# .whl-hf/ at the project root (ignored by git), for bench/hf_decode.py. Carry .whl-hf
# with .whl; `bash bench/gpu_session.sh hf` installs them. numpy is left out: the GPU
# machine's torch brings its own.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
mkdir -p .whl-hf
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl-hf/' "$exclude" 2>/dev/null || echo '/.whl-hf/' >> "$exclude"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d .whl-hf 'transformers==5.25.*'
rm -f .whl-hf/numpy-*.whl
du -sh .whl-hf
