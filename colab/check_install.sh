#!/usr/bin/env bash
# Acceptance check of the Colab install cell, without Colab: a fresh venv with Colab's key pins, then the
# %pip lines of the generated setup cell (quantlab from this checkout instead of GitHub), then:
#   - torch and numpy must be unchanged (pip freeze before/after),
#   - gptqmodel, bitsandbytes, gguf, optimum.gptq and quantlab must import,
#   - colab/01_setup.ipynb (or every copy named in NOTEBOOKS) must pass nbval offline (the install cells are no-ops
#     outside Colab).
# Usage: [PYTHON=python3.13] [TORCH_SPEC=torch==2.11.0] [NOTEBOOKS="colab/*.ipynb"] colab/check_install.sh [VENV]
#        (VENV default /tmp/colabenv; it is deleted and rebuilt)
# Closest to Colab: PYTHON=python3.13 TORCH_SPEC=torch==2.11.0 (PyPI's CUDA build, which runs on a CPU too; about
# 3 GB with its CUDA libraries). The defaults, Python 3 of this machine and torch 2.13.0, need no download here.
# Everything else is Colab's version (googlecolab/backend-info). What stays different: no GPU, no Colab kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${1:-/tmp/colabenv}
WORK=$VENV.work
PY=${PYTHON:-python3}

rm -rf "$VENV" "$WORK"
mkdir -p "$WORK"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
t0=$(date +%s)
"$PIP" install -q "${TORCH_SPEC:-torch==2.13.0}"
# Colab's pins; datasets/matplotlib bring pandas, pyarrow, pillow, requests, pyyaml, tqdm as on Colab.
# threadpoolctl (gptqmodel imports it) is on Colab as a dependency of scikit-learn.
"$PIP" install -q transformers==5.15.0 accelerate==1.14.0 numpy==2.1.3 ipywidgets==7.7.1 peft==0.20.0 \
    datasets==4.0.0 matplotlib threadpoolctl ipykernel nbclient nbformat pytest nbval
"$PIP" freeze > "$WORK/freeze-before.txt"
echo "== Colab-like venv: $("$VENV/bin/python" --version), built in $(( $(date +%s) - t0 )) s; pip freeze in $WORK/freeze-before.txt"

# The install lines exactly as build.py writes them, with quantlab from this checkout: the shared setup cell's
# %pip lines and every named copy's own (%pip and ! lines, in order, once each), run in the venv.
"$VENV/bin/python" colab/build.py --out "$WORK/colab" --quantlab-spec "$REPO" > /dev/null
notebooks=${NOTEBOOKS:-colab/01_setup.ipynb}
# shellcheck disable=SC2086  # NOTEBOOKS is a glob
"$VENV/bin/python" - $(for nb in $notebooks; do echo "$WORK/colab/$(basename "$nb")"; done) > "$WORK/install.sh" <<'EOF'
import json, sys
seen = []
for path in sys.argv[1:]:
    for cell in json.load(open(path))["cells"]:
        for line in "".join(cell["source"]).splitlines():
            line = line.strip()
            if line.startswith("%pip "):
                line = "pip " + line.removeprefix("%pip ")
            elif line.startswith("!"):
                line = line.removeprefix("!")
            else:
                continue
            if line not in seen:
                seen.append(line)
print("\n".join(seen))
EOF
echo "== install lines (quantlab from $REPO):"
cat "$WORK/install.sh"
start=$(date +%s)
(export PATH="$VENV/bin:$PATH" DISABLE_CUDA=1; bash -e "$WORK/install.sh")
echo "== install took $(( $(date +%s) - start )) s"
"$PIP" freeze > "$WORK/freeze-after.txt"

echo "== pip freeze diff (before -> after the install cell):"
diff "$WORK/freeze-before.txt" "$WORK/freeze-after.txt" || true
for pkg in torch numpy; do
    before=$(grep -i "^$pkg==" "$WORK/freeze-before.txt")
    after=$(grep -i "^$pkg==" "$WORK/freeze-after.txt")
    if [ "$before" != "$after" ]; then echo "FAIL: $before became $after"; exit 1; fi
    echo "OK: $after unchanged"
done

echo "== imports:"
"$VENV/bin/python" -c "import gptqmodel, bitsandbytes, gguf, optimum.gptq, quantlab; print('all import')" 2>&1 | tail -n 1

echo "== nbval on $notebooks (offline):"
t0=$(date +%s)
# shellcheck disable=SC2086  # NOTEBOOKS is a glob
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg QUANTLAB_CACHE="$WORK/cache" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=20 --nbval-lax --nbval-current-env \
    $(for nb in $notebooks; do echo "$WORK/colab/$(basename "$nb")"; done)  # the generated copies: outputs stay in $WORK
echo "== nbval took $(( $(date +%s) - t0 )) s"
