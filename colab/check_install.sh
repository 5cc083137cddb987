#!/usr/bin/env bash
# Acceptance check of the Colab install cell, without Colab: a fresh venv with Colab's key pins, then the
# %pip lines of the generated setup cell (quantlab from this checkout instead of GitHub), then:
#   - torch and numpy must be unchanged (pip freeze before/after),
#   - gptqmodel, bitsandbytes, gguf, optimum.gptq and quantlab must import,
#   - colab/01_setup.ipynb must pass nbval offline (its install cell is a no-op outside Colab).
# Usage: colab/check_install.sh [VENV]   (default /tmp/colabenv; it is deleted and rebuilt)
# Differences from Colab: Python 3.11 instead of 3.13 and the CPU build of torch 2.13.0 instead of
# 2.11.0+cu128 (what this machine has on disk). Everything else is Colab's version (googlecolab/backend-info).
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
"$PIP" install -q torch==2.13.0
# Colab's pins; datasets/matplotlib bring pandas, pyarrow, pillow, requests, pyyaml, tqdm as on Colab.
# threadpoolctl (gptqmodel imports it) is on Colab as a dependency of scikit-learn.
"$PIP" install -q transformers==5.15.0 accelerate==1.14.0 numpy==2.1.3 ipywidgets==7.7.1 peft==0.20.0 \
    datasets==4.0.0 matplotlib threadpoolctl ipykernel nbclient nbformat pytest nbval
"$PIP" freeze > "$WORK/freeze-before.txt"
echo "== Colab-like venv: $("$VENV/bin/python" --version), built in $(( $(date +%s) - t0 )) s; pip freeze in $WORK/freeze-before.txt"

# The install lines exactly as build.py writes them, with quantlab from this checkout.
"$VENV/bin/python" colab/build.py --out "$WORK/colab" --quantlab-spec "$REPO" > /dev/null
"$VENV/bin/python" - "$WORK/colab/01_setup.ipynb" > "$WORK/install.txt" <<'EOF'
import json, sys
for cell in json.load(open(sys.argv[1]))["cells"]:
    for line in "".join(cell["source"]).splitlines():
        if line.strip().startswith("%pip "):
            print(line.strip().removeprefix("%pip "))
EOF
echo "== install cell (quantlab from $REPO):"
sed 's/^/pip /' "$WORK/install.txt"
start=$(date +%s)
while read -r args; do
    eval "\"$PIP\" $args"
done < "$WORK/install.txt"
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

echo "== nbval on colab/01_setup.ipynb (offline):"
t0=$(date +%s)
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg QUANTLAB_CACHE="$WORK/cache" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env colab/01_setup.ipynb
echo "== nbval took $(( $(date +%s) - t0 )) s"
