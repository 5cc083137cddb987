#!/usr/bin/env bash
# Pack vLLM 0.25.0 and the run-time requirements the GPU runner lacks (vllm-requirements.txt says which, and why
# the rest is left out) into .gpu_bundle/vllm-0, vllm-1, ... (ignored by git): one tar of wheels, split into parts
# of 55 MiB, one part per device call (each call carries at most 64 MiB, the working tree of about 5 MB included).
# Then, one call each, within 30 s of the previous one, after install-a and install-b:
#   bash tests/gpu_runner/run.sh install-vllm-0   ...   bash tests/gpu_runner/run.sh install-vllm-N
# The last part joins the tar, checks its sha256, installs the wheels offline and checks that `vllm serve` imports.
# Usage: tests/gpu_runner/bundle-vllm.sh   (VLLM_WHEEL=path reuses a downloaded vllm wheel; 250 MB otherwise)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/gpu_runner
out=.gpu_bundle
pip="${PIP:-.venv/bin/pip}"
wheel=${VLLM_WHEEL:-/tmp/vllm/vllm-0.25.0-cp38-abi3-manylinux_2_28_x86_64.whl}
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_31_x86_64)
rm -rf "$out"/vllm-* && mkdir -p "$out/vllm-tmp/wheels"
if [ -f "$wheel" ]; then cp "$wheel" "$out/vllm-tmp/wheels/"; else
  "$pip" download -q --no-deps "${platform[@]}" -d "$out/vllm-tmp/wheels" vllm==0.25.0; fi
"$pip" download -q --no-deps "${platform[@]}" -d "$out/vllm-tmp/wheels" -r "$here/vllm-requirements.txt"
(cd "$out/vllm-tmp" && tar -cf vllm.tar wheels && sha256sum vllm.tar > vllm.sha256 && split -b 55m -d -a 1 vllm.tar vllm.tar.part-)
parts=("$out"/vllm-tmp/vllm.tar.part-*)
for i in "${!parts[@]}"; do mkdir -p "$out/vllm-$i" && mv "${parts[$i]}" "$out/vllm-$i/"; done
echo "${#parts[@]}" > "$out/vllm-0/parts" && mv "$out/vllm-tmp/vllm.sha256" "$out/vllm-0/"
echo "wheels: $(ls "$out"/vllm-tmp/wheels | wc -l), $(du -sh "$out/vllm-tmp/wheels" | cut -f1); parts: ${#parts[@]} (one device call each)"
du -sh "$out"/vllm-[0-9]*
rm -rf "$out/vllm-tmp"
