#!/usr/bin/env bash
# Runs on the offline GPU runner (device tool), from the repository root; see README.md beside this file.
#   tests/gpu_runner/run.sh install-a         stage bundle part a, install its wheels, build pypcre
#   tests/gpu_runner/run.sh install-b         join and install the model (part b)
#   tests/gpu_runner/run.sh install-c         install llama-cpp-python (part c)
#   tests/gpu_runner/run.sh install-kernels   unpack gptqmodel's compiled kernels an earlier run brought back
#   tests/gpu_runner/run.sh unit [FILES]      unit tests (default: tests/)
#   tests/gpu_runner/run.sh notebooks [NBS]   nbval-lax over notebooks (default: notebooks/*.ipynb)
#   tests/gpu_runner/run.sh t4-notebooks [NBS]
#                                             the same under the libraries' view of a T4 (t4view/sitecustomize.py)
#   tests/gpu_runner/run.sh compare [ARGS]    `quantlab compare` on the default model
#   tests/gpu_runner/run.sh sweep [ARGS]      `quantlab sweep` (notebook 11): results to $OUT/sweep${TAG}
#   tests/gpu_runner/run.sh suite             unit, notebooks and compare in one call
#   tests/gpu_runner/run.sh install-vllm-N    stage part N of bundle-vllm.sh's vLLM tar; the last one joins, checks
#                                             and installs it, then checks that `vllm serve` imports
#   tests/gpu_runner/run.sh make-checkpoints  in the background (it outlives the call): what `serve` serves, the
#                                             8B shape's random checkpoints first (background job "prep")
#   tests/gpu_runner/run.sh background NAME STEP [ARGS]
#                                             any step above as background job NAME (it outlives the call), run
#                                             from a private copy of the checkout, once per machine
#   tests/gpu_runner/run.sh wait NAME [SECONDS]
#                                             until job NAME ends (or SECONDS pass): its log's tail and status
#   tests/gpu_runner/run.sh collect           every job's log and $OUT folder -> $OUT/jobs.tgz
#   tests/gpu_runner/run.sh serve [ARGS]      vLLM on the series' checkpoints (or --checkpoint LABEL=PATH[:QUANT],
#                                             --shape NAME, --tensor-parallel-size N), load test at concurrency
#                                             1, 4, 16, 64 -> $OUT/serve
#                                             (SERVE_LIMIT); waits for make-checkpoints to end
# Every test step appends "NAME rc=.. seconds=.." to $OUT/steps.txt and writes its log and junit XML to $OUT.
# The runner keeps what a call installed only if the next call comes within about 30 s, and one call may run
# 10 minutes: split a long suite over several calls (README.md). Step limits: UNIT_LIMIT, NOTEBOOK_LIMIT,
# COMPARE_LIMIT, SWEEP_LIMIT (seconds).
set -uo pipefail
stage=${QUANTLAB_STAGE:-/tmp/quantlab-stage}
python=${PYTHON:-python3}
out=${OUT:-/tmp/quantlab-out}
mkdir -p "$stage" "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
# QUANTLAB_CACHE=/tmp/quantlab-cache-t4 gives a job a cache of its own (a T4-view notebook quantizes afresh, as on
# Colab, and no job waits on another's checkpoint)
export QUANTLAB_CACHE=${QUANTLAB_CACHE:-/tmp/quantlab-cache} GPTQMODEL_OFFLINE=1
# vLLM's sampler imports FlashInfer unless told not to; the bundle leaves FlashInfer out (vllm-requirements.txt)
export VLLM_USE_FLASHINFER_SAMPLER=0
# NVLink multicast stays off on the runner's multi-GPU machines (the device tool's notes): vLLM's tensor parallelism
# uses NCCL, and `serve --tensor-parallel-size 2` starts servers that inherit these
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# gptqmodel compiles its CUDA kernels (Marlin) on first use, about 3 minutes; keep them where a later
# call on the same machine finds them (install-kernels seeds them from an earlier run).
export GPTQMODEL_TORCH_EXTENSIONS_DIR=/tmp/quantlab-ext
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # quantlab from this checkout, also in notebook kernels

need_installed() {
  [ -f "$stage/installed-${1}" ] || { echo "part $1 is not installed here: run install-$1 first (within 30 s)"; exit 3; }
}

install_a() {
  cp -r .gpu_bundle/a/. "$stage/"
  "$python" -m pip install -q --no-index --no-deps "$stage"/wheels/*.whl
  PYPCRE_DISABLE_NATIVE_FLAGS=1 "$python" -m pip install -q --no-index --no-deps --no-build-isolation \
    "$stage"/sdists/*.tar.gz
  "$python" -m ipykernel install --sys-prefix --name python3 > /dev/null
  touch "$stage/installed-a"
}

install_b() {
  need_installed a
  cp .gpu_bundle/b/model.part.* "$stage/"
  name=$(cat "$stage/model.name")
  cat "$stage"/model.part.* > "$stage/$name"
  (cd "$stage" && sha256sum -c model.sha256) || exit 4
  "$python" -m pip install -q --no-index --no-deps "$stage/$name"
  touch "$stage/installed-b"
}

install_c() {
  need_installed b
  "$python" -m pip install -q --no-index --no-deps .gpu_bundle/c/*.whl
  touch "$stage/installed-c"
}

install_kernels() {  # optional, after install-c: .gpu_bundle/kernels holds the ext.tar.gz.part-* files of a run
  cat .gpu_bundle/kernels/ext.tar.gz.part-* | tar -xz -C /
}

install_vllm() {  # install-vllm-N: parts arrive one call each (bundle-vllm.sh); after install-a and install-b
  need_installed b
  mkdir -p "$stage/vllm"
  cp .gpu_bundle/vllm-"$1"/* "$stage/vllm/"
  local parts
  parts=$(cat "$stage/vllm/parts" 2>/dev/null) || { echo "part 0 (vllm-0) first"; exit 3; }
  [ "$(ls "$stage"/vllm/vllm.tar.part-* | wc -l)" -eq "$parts" ] || { echo "staged part $1 of $parts"; return 0; }
  cat "$stage"/vllm/vllm.tar.part-* > "$stage/vllm/vllm.tar" && rm "$stage"/vllm/vllm.tar.part-*
  (cd "$stage/vllm" && sha256sum -c vllm.sha256) || exit 4
  tar -xf "$stage/vllm/vllm.tar" -C "$stage/vllm" && rm "$stage/vllm/vllm.tar"
  "$python" -m pip install -q --no-index --no-deps "$stage"/vllm/wheels/*.whl
  # what the serve path imports; a ModuleNotFoundError here names a requirement vllm-requirements.txt lacks
  "$python" -c "import vllm.entrypoints.openai.api_server, vllm.v1.engine.core; print('vllm', vllm.__version__)" \
    && "$python" -m vllm.entrypoints.cli.main serve --help > /dev/null && touch "$stage/installed-vllm"
}

jobs_dir=${QUANTLAB_JOBS:-/tmp/quantlab-jobs}
background() {  # background NAME STEP [ARGS]: `run.sh STEP ARGS` in a process session of its own, which the runner
  # lets outlive the call, so that later calls (the vLLM parts, say) overlap it. It runs from a private copy of this
  # checkout: every device call copies the working tree again, and a job that imports a module while that happens
  # fails (seen 2026-12-04: notebook 13, "cannot import name 'ggml' from 'quantlab'", 18 of 32 cells). Once per
  # machine: a command repeated on a machine that turned out to be fresh, or sent twice, starts nothing the second
  # time (the same day two copies of notebook 12 shared the GPU unseen). Kill a job with `kill -- -$(cat NAME.pid)`
  # in $jobs_dir; a notebook's kernel is a session of its own and needs killing too.
  local name=$1; shift
  mkdir -p "$jobs_dir"
  mkdir "$jobs_dir/$name.lock" 2>/dev/null || { echo "job $name was started on this machine already"; return 0; }
  local copy="$jobs_dir/$name.checkout"
  mkdir -p "$copy" && tar -C . --exclude=./.gpu_bundle --exclude=./.venv --exclude=./.git -cf - . | tar -C "$copy" -xf -
  (cd "$copy" && OUT="$jobs_dir/$name.out" setsid nohup bash -c "bash tests/gpu_runner/run.sh $*; echo \$? > $jobs_dir/$name.rc" \
    > "$jobs_dir/$name.log" 2>&1 < /dev/null & echo $! > "$jobs_dir/$name.pid") > /dev/null 2>&1 < /dev/null
  # (that redirection: the job's subshell would otherwise hold this call's stdout, and `run.sh background ... | tail`
  # would wait for the job to end; seen 2026-12-07, a 300 s call lost)
  echo "job $name started in the background: $jobs_dir/$name.log, its results in $jobs_dir/$name.out"
}

collect() {  # every job's log and results folder as one file in $OUT (a call brings back at most 8)
  tar -czf "$out/jobs.tgz" -C "$jobs_dir" --exclude='*.checkout' --exclude='*.lock' . && ls -l "$out/jobs.tgz"
}

wait_job() {  # wait_job NAME [SECONDS]: until job NAME ends, at most SECONDS (default 540); 0 once it ended with 0
  local name=$1 limit=${2:-540} start=$SECONDS
  [ -d "$jobs_dir/$name.lock" ] || { echo "no job $name on this machine (a fresh machine?)"; return 3; }
  while [ ! -f "$jobs_dir/$name.rc" ] && [ $((SECONDS - start)) -lt "$limit" ]; do sleep 2; done
  tail -n 3 "$jobs_dir/$name.log"
  [ -f "$jobs_dir/$name.rc" ] || { echo "job $name still running after ${limit} s"; return 124; }
  echo "job $name rc=$(cat "$jobs_dir/$name.rc") waited=$((SECONDS - start))"
  return "$(cat "$jobs_dir/$name.rc")"
}

make_checkpoints() {
  need_installed b
  background prep make-checkpoints-now
}

serve_step() {  # defaults: every checkpoint of quantlab.serve.vllm_checkpoints that is cached, 128 new tokens each
  need_installed vllm
  local start=$SECONDS
  if [ -d "$jobs_dir/prep.lock" ]; then  # make-checkpoints ran in an earlier call: wait for it (no GPU shared
    wait_job prep 100000 > /dev/null  # with the measurements), keep its log
    cp "$jobs_dir/prep.log" "$out/make-checkpoints.log"
    echo "make-checkpoints rc=$(cat "$jobs_dir/prep.rc") waited=$((SECONDS - start))" | tee -a "$out/steps.txt"
  fi
  step "serve${TAG:-}" "$(( ${SERVE_LIMIT:-560} - (SECONDS - start) ))" "$python" -m quantlab.serve --engine vllm \
    --out "$out/serve${TAG:-}" "${@:---series}"
}

describe_machine() {
  "$python" -m quantlab env > "$out/env.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt"
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, remember the status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  # SIGINT first: pytest then still reports where it stopped, its durations and its junit XML
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
}

keep_kernels() {  # KEEP_KERNELS=1: bring the compiled kernels back (gptqmodel loads a cached .so without its
  # build files), in parts of 15 MiB (the device tool returns at most 8 files of 16 MiB): for .gpu_bundle/kernels
  [ "${KEEP_KERNELS:-0}" = 1 ] || return 0
  local so
  so=$(find "$GPTQMODEL_TORCH_EXTENSIONS_DIR" "$HOME/.cache/gptqmodel/torch_extensions" -name '*.so' 2>/dev/null)
  [ -n "$so" ] || return 0
  rm -f "$out"/ext.tar.gz.part-*
  tar -czf - $so 2>/dev/null | split -b 15M - "$out/ext.tar.gz.part-"
}

unit() {
  step unit "${UNIT_LIMIT:-560}" "$python" -m pytest -q -p no:cacheprovider --durations=10 \
    --junitxml="$out/unit.xml" "${@:-tests}"
}

notebooks() {  # TAG=-b names a second batch (notebooks-b.log, notebooks-b.xml), to run beside another step
  step "notebooks${TAG:-}" "${NOTEBOOK_LIMIT:-560}" "$python" -m pytest -q -p no:cacheprovider --durations=30 \
    --junitxml="$out/notebooks${TAG:-}.xml" --nbval-lax --nbval-current-env "${@:-notebooks/*.ipynb}"
  # what the notebooks wrote beside themselves (notebooks/12's server logs and load-test rows), less the models
  [ -d notebooks/results ] && (cd notebooks && find results -type f \( -name '*.json' -o -name '*.md' -o -name '*.log' \) \
    -size -20M | tar -czf "$out/notebook-results${TAG:-}.tgz" -T -)
  keep_kernels
}

t4_notebooks() {  # nbval under the libraries' view of a T4 (t4view/sitecustomize.py): capability 7.5, 15 GB
  ( export QUANTLAB_T4_VIEW=1 PYTHONPATH="$PWD/tests/gpu_runner/t4view:$PYTHONPATH"; TAG="-t4${TAG:-}"
    notebooks "$@" )
}

compare() {  # the device tool brings back 8 files at most: the tables come back, the plots stay
  step compare "${COMPARE_LIMIT:-560}" "$python" -m quantlab compare --out /tmp/quantlab-compare "$@"
  mkdir -p "$out/compare" && cp /tmp/quantlab-compare/results.{json,md} "$out/compare/"
  keep_kernels
}

sweep() {  # writes after every point, so a step stopped by its limit still returns what it measured
  local folder="$out/sweep${TAG:-}"
  step "sweep${TAG:-}" "${SWEEP_LIMIT:-560}" "$python" -m quantlab sweep --out "$folder" "$@"
  keep_kernels
}

command=${1:-}
shift || true
case "$command" in
  install-a) install_a ;;
  install-b) install_b ;;
  install-c) install_c ;;
  install-kernels) install_kernels ;;
  t4-notebooks) need_installed c; [ -f "$out/env.txt" ] || describe_machine; t4_notebooks "$@" ;;
  unit|notebooks|compare|sweep) need_installed c; [ -f "$out/env.txt" ] || describe_machine; "$command" "$@" ;;
  suite) need_installed c; describe_machine; unit; notebooks; compare ;;
  install-vllm-[0-9]*) install_vllm "${command#install-vllm-}" ;;
  make-checkpoints) make_checkpoints ;;
  make-checkpoints-now) need_installed b; "$python" -m quantlab.serve --make-checkpoints --shape llama-3.1-8b ;;
  background) background "$@" ;;
  wait) wait_job "$@" ;;
  collect) collect ;;
  serve) [ -f "$out/env.txt" ] || describe_machine; serve_step "$@" ;;
  *) sed -n '2,31p' "$0"; exit 2 ;;
esac
