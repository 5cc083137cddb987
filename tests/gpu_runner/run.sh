#!/usr/bin/env bash
# Runs on the offline GPU runner (device tool), from the repository root; see README.md beside this file.
#   tests/gpu_runner/run.sh install-a   stage bundle part a, install its wheels, build pypcre
#   tests/gpu_runner/run.sh install-c   install part c (llama-cpp-python)
#   tests/gpu_runner/run.sh suite       join the model (part b), then unit tests, every notebook and
#                                       `quantlab compare`, each under its own time limit; logs, junit XML,
#                                       results and a summary row for docs/gpu-runs.md go to $OUT
# The runner keeps what a call installed only if the next call comes within about 30 s.
set -uo pipefail
stage=/tmp/quantlab-stage
python=${PYTHON:-python3}
out=${OUT:-/tmp/quantlab-out}
mkdir -p "$stage" "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
export QUANTLAB_CACHE=/tmp/quantlab-cache GPTQMODEL_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # quantlab from this checkout, also in notebook kernels

install_a() {
  cp -r .gpu_bundle/a/. "$stage/"
  "$python" -m pip install -q --no-index --no-deps "$stage"/wheels/*.whl
  PYPCRE_DISABLE_NATIVE_FLAGS=1 "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
    "$stage"/sdists/*.tar.gz
  "$python" -m ipykernel install --sys-prefix --name python3 > /dev/null
  touch "$stage/installed-a"
}

install_c() {
  [ -f "$stage/installed-a" ] || { echo "part a is not installed here: run install-a first (within 30 s)"; exit 3; }
  "$python" -m pip install -q --no-index --no-deps .gpu_bundle/c/*.whl
}

install_model() {
  [ -f "$stage/installed-a" ] || { echo "part a is not installed here: run install-a first (within 30 s)"; exit 3; }
  cp .gpu_bundle/b/model.part.* "$stage/"
  name=$(cat "$stage/model.name")
  cat "$stage"/model.part.* > "$stage/$name"
  (cd "$stage" && sha256sum -c model.sha256) || exit 4
  "$python" -m pip install -q --no-index --no-deps "$stage/$name"
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, remember the status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
}

suite() {
  install_model
  "$python" -m quantlab env > "$out/env.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt"
  step unit "${UNIT_LIMIT:-200}" "$python" -m pytest -q -p no:cacheprovider --junitxml="$out/unit.xml" ${UNIT_TESTS:-tests}
  step notebooks "${NOTEBOOK_LIMIT:-240}" "$python" -m pytest -q -p no:cacheprovider --junitxml="$out/notebooks.xml" \
    --nbval-lax --nbval-current-env notebooks/*.ipynb
  step compare "${COMPARE_LIMIT:-150}" "$python" -m quantlab compare --out "$out/compare" ${COMPARE_ARGS:-}
}

case "${1:-}" in
  install-a) install_a ;;
  install-c) install_c ;;
  suite) suite ;;
  *) echo "usage: $0 install-a | install-c | suite"; exit 2 ;;
esac
