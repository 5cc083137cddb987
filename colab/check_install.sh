#!/usr/bin/env bash
# Acceptance check of the Colab install cell, without Colab: a fresh venv with Colab's key pins, then the
# %pip lines of the generated setup cell (quantlab from this checkout instead of GitHub), then:
#   - torch and numpy must be unchanged (pip freeze before/after),
#   - gptqmodel, bitsandbytes, gguf, optimum.gptq and quantlab must import,
#   - every copy (or those named in NOTEBOOKS) must pass nbval offline (the install cells are no-ops outside Colab),
#   - then a table per copy: setup seconds, nbval pass/fail, cells, seconds (also $VENV.work/summary.json).
# Usage: [PYTHON=python3.13] [TORCH_SPEC=torch==2.11.0] [NOTEBOOKS="colab/*.ipynb"] [WITH_LLAMA_CPP=1]
#        [RECORD=docs/colab-check.json] colab/check_install.sh [VENV]   (VENV default /tmp/colabenv; rebuilt)
# The defaults are Colab's: Python 3.13 (here through pyenv: PYENV_VERSION=3.13.0), torch 2.11.0 (PyPI's CUDA
# build, which runs on a CPU too; about 3 GB with its CUDA libraries), every copy. RECORD=FILE keeps the summary
# that colab/build.py writes into each copy's first cell (its setup time) and the README's table cites.
# Everything else is Colab's version (googlecolab/backend-info). What stays different: no GPU, no Colab kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${1:-/tmp/colabenv}
WORK=$VENV.work
PY=${PYTHON:-python3.13}

rm -rf "$VENV" "$WORK"
mkdir -p "$WORK"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
t0=$(date +%s)
"$PIP" install -q "${TORCH_SPEC:-torch==2.11.0}"
# Colab's pins; datasets/matplotlib bring pandas, pyarrow, pillow, requests, pyyaml, tqdm as on Colab.
# threadpoolctl (gptqmodel imports it) is on Colab as a dependency of scikit-learn.
"$PIP" install -q transformers==5.15.0 accelerate==1.14.0 numpy==2.1.3 ipywidgets==7.7.1 peft==0.20.0 \
    datasets==4.0.0 matplotlib threadpoolctl ipykernel nbclient nbformat pytest nbval
"$PIP" freeze > "$WORK/freeze-before.txt"
echo "== Colab-like venv: $("$VENV/bin/python" --version), built in $(( $(date +%s) - t0 )) s; pip freeze in $WORK/freeze-before.txt"

# The install lines exactly as build.py writes them, with quantlab from this checkout: each named copy's setup
# cell (the shared %pip lines, then its own ! lines), in order, each line run once and timed without pip's cache
# (a Colab session starts with none). A copy's setup time is the sum of its lines: on Colab every copy runs them
# afresh. The lines of an `if IS_COLAB and BUILD_LLAMA_CPP:` block (llama.cpp's compile, 06 and 12) run only with
# WITH_LLAMA_CPP=1, as on Colab only when the reader sets that switch.
"$VENV/bin/python" colab/build.py --out "$WORK/colab" --quantlab-spec "$REPO" > /dev/null
notebooks=${NOTEBOOKS:-colab/*.ipynb}
echo "== install lines (quantlab from $REPO), timed:"
# shellcheck disable=SC2046  # NOTEBOOKS is a glob
PATH="$VENV/bin:$PATH" DISABLE_CUDA=1 PIP_NO_CACHE_DIR=1 WITH_LLAMA_CPP=${WITH_LLAMA_CPP:-0} \
    "$VENV/bin/python" - "$WORK/install-times.json" $(for nb in $notebooks; do echo "$WORK/colab/$(basename "$nb")"; done) <<'EOF2'
import json, os, subprocess, sys, time
from pathlib import Path

def setup_lines(path):
    """The shell lines a copy's setup cell runs on Colab, in order (an opt-in block only if asked for)."""
    cell = next("".join(c["source"]) for c in json.load(open(path))["cells"] if "IS_COLAB =" in "".join(c["source"]))
    lines, opted_out = [], False
    for raw in cell.splitlines():
        if raw.startswith("if "):
            opted_out = raw.startswith("if IS_COLAB and BUILD_LLAMA_CPP") and os.environ["WITH_LLAMA_CPP"] != "1"
        line = raw.strip()
        if line.startswith("%pip "):
            line = "pip " + line.removeprefix("%pip ")
        elif line.startswith("%env "):
            continue  # DISABLE_CUDA=1: exported for every line here
        elif line.startswith("!"):
            line = line.removeprefix("!")
        else:
            continue
        if not opted_out:
            lines.append(line)
    return lines

seconds, copies = {}, {}
for path in sys.argv[2:]:
    copies[Path(path).name] = lines = setup_lines(path)
    for line in lines:
        if line in seconds:
            continue
        start = time.perf_counter()
        returncode = subprocess.run(["bash", "-c", line]).returncode
        if returncode and not line.startswith("nvidia-smi"):  # the one allowed to fail: vLLM, on a GPU runtime only
            sys.exit(f"install line failed ({returncode}): {line}")
        seconds[line] = round(time.perf_counter() - start, 1)
        print(f"{seconds[line]:7.1f} s  {line}", flush=True)
report = {name: {"setup_seconds": round(sum(seconds[line] for line in lines), 1), "lines": lines}
          for name, lines in copies.items()}
Path(sys.argv[1]).write_text(json.dumps({"line_seconds": seconds, "copies": report}, indent=1))
EOF2
echo "== install took $(( $(date +%s) - t0 )) s since the venv was started"
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
# shellcheck disable=SC2046  # NOTEBOOKS is a glob
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg QUANTLAB_CACHE="$WORK/cache" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=20 --nbval-lax --nbval-current-env \
    --junitxml="$WORK/nbval.xml" \
    $(for nb in $notebooks; do echo "$WORK/colab/$(basename "$nb")"; done) || nbval_rc=$?  # the table says which
echo "== nbval took $(( $(date +%s) - t0 )) s"

# Per copy: setup seconds, nbval cells passed/failed and seconds -> $WORK/summary.json (RECORD=FILE copies it)
"$VENV/bin/python" - "$WORK" <<'EOF2'
import json, os, platform, sys, time, xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

work = Path(sys.argv[1])
install = json.loads((work / "install-times.json").read_text())["copies"]
copies = {}
for case in ET.parse(work / "nbval.xml").iter("testcase"):
    where = f"{case.get('file', '')} {case.get('classname', '')}"
    name = next((n for n in install if n.removesuffix(".ipynb") in where), None)
    if name is None:
        continue
    row = copies.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0, "nbval_seconds": 0.0})
    row["nbval_seconds"] = round(row["nbval_seconds"] + float(case.get("time", 0)), 1)
    outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else \
        "skipped" if case.find("skipped") is not None else "passed"
    row[outcome] += 1
summary = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": version("torch"),
           "transformers": version("transformers"), "numpy": version("numpy"), "cpus": os.cpu_count(),
           "copies": {name: {"setup_seconds": install[name]["setup_seconds"], **copies.get(name, {})}
                      for name in install}}
(work / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"{'copy':36s} {'setup s':>8s} {'result':>7s} {'cells':>6s} {'nbval s':>8s}")
for name, row in summary["copies"].items():
    result = "FAIL" if row.get("failed") or "passed" not in row else "pass"
    print(f"{name:36s} {row['setup_seconds']:8.0f} {result:>7s} {row.get('passed', 0):6d} {row.get('nbval_seconds', 0):8.0f}")
EOF2
if [ -n "${RECORD:-}" ]; then cp "$WORK/summary.json" "$RECORD" && echo "== recorded in $RECORD"; fi
exit "${nbval_rc:-0}"
