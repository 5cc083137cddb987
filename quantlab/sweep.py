"""``quantlab sweep``: where quantization pays, measured (notebooks/11_when_quantization_pays).

Decode speed of model size x weight format x engine x batch, each point beside the floor that bandwidth sets:

* **shapes** (:mod:`quantlab.shapes`): the default model (real weights) and random-weight models at the shapes of
  Qwen2.5-0.5B, Llama-3.2-1B and Llama-3.1-8B: speed and memory only, random weights have no quality;
* **engines** (:data:`ENGINES`): transformers ``generate`` eager, transformers with a static KV cache (which
  transformers compiles on CUDA), llama.cpp (llama-cpp-python, GGUF, on the CPU), vLLM;
* **methods** (:data:`METHODS`): 16-bit, bitsandbytes int8 and NF4, GPTQ int4 (Marlin on a GPU), FP8 (torchao),
  GGUF Q8_0 and Q4_K_M;
* **decode ms per step**, prefill separated (:func:`stable_timing`): repeated in rounds until two consecutive
  rounds' medians agree within 10 %, median and min-max of the last round;
* **the floor**: every weight read once per step at the copy bandwidth measured in the same run
  (:func:`quantlab.evaluate.memory_bandwidth`), and the fit ``ms = overhead + bytes / bandwidth`` over the model
  sizes of each engine and method (:func:`fit_floor`): the fixed per-token overhead is what quantization cannot cut.

Results go to ``results.json`` and ``results.md`` after every point, so an interrupted run keeps what it measured,
and to two plots (:func:`quantlab.plot.sweep_speed`, :func:`quantlab.plot.sweep_memory`).
"""

import contextlib
import gc
import importlib.util
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quantlab import compare, env, evaluate, memory, methods, models, plot, shapes
from quantlab.errors import QuantlabError

ENGINES = {
    "eager": "transformers generate, dynamic KV cache, eager PyTorch",
    "compiled": "transformers generate with cache_implementation='static', which transformers compiles on CUDA",
    "llama.cpp": "llama-cpp-python (llama.cpp) on the CPU, GGUF files",
    "vllm": "vLLM, measured by quantlab.serve behind its OpenAI-compatible server (notebooks/12)",
}
TRANSFORMERS_ENGINES = ("eager", "compiled")


@dataclass(frozen=True)
class SweepMethod:
    name: str
    description: str
    engines: tuple[str, ...]
    cuda_only: bool = False
    requires: tuple[str, ...] = ()


METHODS = {m.name: m for m in [
    SweepMethod("baseline", "16-bit: fp16/bf16 on a GPU, float32 in transformers on a CPU, F16 GGUF in llama.cpp",
                (*TRANSFORMERS_ENGINES, "llama.cpp", "vllm")),
    SweepMethod("bnb-int8", "bitsandbytes LLM.int8(), quantized on load", TRANSFORMERS_ENGINES,
                requires=("bitsandbytes",)),
    SweepMethod("bnb-nf4", "bitsandbytes NF4 + double quant, quantized on load", TRANSFORMERS_ENGINES,
                requires=("bitsandbytes",)),
    SweepMethod("gptq-int4", "GPTQ int4 (random packed weights, symmetric, gptq_v2), Marlin kernel",
                (*TRANSFORMERS_ENGINES, "vllm"), cuda_only=True, requires=("gptqmodel", "optimum")),
    SweepMethod("fp8", "torchao float8 weights and activations, per row (needs compute capability 8.9+)",
                (*TRANSFORMERS_ENGINES, "vllm"), cuda_only=True, requires=("torchao",)),
    SweepMethod("gguf-q8_0", "GGUF Q8_0 by llama.cpp's quantizer", ("llama.cpp",), requires=("llama_cpp",)),
    SweepMethod("gguf-q4_k_m", "GGUF Q4_K_M by llama.cpp's quantizer", ("llama.cpp",), requires=("llama_cpp",)),
]}
GGUF_TYPE = {"baseline": "F16", "gguf-q8_0": "Q8_0", "gguf-q4_k_m": "Q4_K_M"}

CPU_SIZES = ("smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b")
GPU_SIZES = ("smollm2-135m", "llama-3.2-1b", "llama-3.1-8b")
CPU_ENGINES = ("eager", "llama.cpp")
# bitsandbytes on a CPU decodes the default model at about a second per step (notebooks 07, 09): named with
# --methods it is measured, but not in the default run's 15 minutes
CPU_METHODS = ("baseline", "gguf-q8_0", "gguf-q4_k_m")
GPU_METHODS = ("baseline", "bnb-int8", "bnb-nf4", "gptq-int4", "fp8")
GPU_ENGINES = ("eager", "compiled", "vllm")
# On a 2-core CPU, transformers decodes 0.5B+ float32 models at seconds per token: beyond the default run's
# 15 minutes. Named with --sizes they are measured anyway.
CPU_TRANSFORMERS_SIZES = ("smollm2-135m",)

VLLM_REASON = ("vLLM is measured through its server, under load, not by this sweep: `python -m quantlab.serve "
               "--engine vllm --series --shape llama-3.1-8b` (notebooks/12, docs/gpu-runs.md)")


@dataclass(frozen=True)
class Protocol:
    prompt_tokens: int = 32
    new_tokens: int = 32
    repeats: int = 3  # measurements per round
    max_rounds: int = 4
    tolerance: float = 0.10  # two consecutive rounds' medians within 10 %: stable

    @classmethod
    def for_device(cls, device: str) -> "Protocol":
        # 32 steps are 1-3 s for the 8B shape on an H200 (bnb int8: 77 ms a step); a 2-core CPU decodes the
        # 1B F16 GGUF at a few tokens/s
        return cls(new_tokens=32 if device.startswith("cuda") else 16, repeats=3, max_rounds=3)


# --- arguments ------------------------------------------------------------------------------------------------


def _names(csv: str | None, known, what: str, default) -> list[str]:
    if not csv:
        return list(default)
    names = [n.strip() for n in csv.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QuantlabError(f"Unknown {what} {', '.join(map(repr, unknown))}. Valid: {', '.join(known)}")
    return names


def parse_batches(csv: str | None) -> list[int]:
    try:
        batches = [int(b) for b in (csv or "1,8").split(",")]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise QuantlabError(f"--batch takes positive integers separated by commas (e.g. 1,8), not {csv!r}.")
    return batches


def check_out_dir(out: Path) -> None:
    """Fail before measuring if ``out`` cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise QuantlabError(f"Cannot write results to {out}: {err}. Pass --out a folder you can write.") from err


@dataclass(frozen=True)
class Plan:
    sizes: list[str]
    methods: list[str]
    engines: list[str]
    batches: list[int]
    device: str
    explicit_sizes: bool


def plan(sizes=None, methods_csv=None, engines=None, batch=None, device=None) -> Plan:
    """Validate the arguments (unknown names list the valid ones) and fill in the defaults for ``device``."""
    device = device or models.default_device()
    on_gpu = device.startswith("cuda")
    return Plan(
        sizes=_names(sizes, shapes.SHAPES, "model size", GPU_SIZES if on_gpu else CPU_SIZES),
        methods=_names(methods_csv, METHODS, "method", GPU_METHODS if on_gpu else CPU_METHODS),
        engines=_names(engines, ENGINES, "engine", GPU_ENGINES if on_gpu else CPU_ENGINES),
        batches=parse_batches(batch), device=device, explicit_sizes=bool(sizes))


def skip_reason(p: Plan, size: str, method: str, engine: str, batch: int) -> str | None:
    """Why this point is not measured here, or None."""
    m = METHODS[method]
    if engine == "vllm":
        return VLLM_REASON
    missing = [r for r in m.requires if importlib.util.find_spec(r) is None]
    if missing:
        return f"needs {', '.join(missing)} (pip install -r requirements.txt)"
    if m.cuda_only and not p.device.startswith("cuda"):
        return "needs a CUDA GPU" + (" with compute capability 8.9+" if method == "fp8" else "")
    if method == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        return "float8 matmuls need compute capability 8.9+ (Ada, Hopper); this GPU has less"
    if engine == "compiled" and not p.device.startswith("cuda"):
        return "transformers compiles the static-cache decode step on CUDA only"
    if engine == "llama.cpp" and batch > 1:
        return "llama-cpp-python's high-level API (Llama.eval) decodes one sequence: batch 1 only"
    if (engine in TRANSFORMERS_ENGINES and not p.device.startswith("cuda") and not p.explicit_sizes
            and size not in CPU_TRANSFORMERS_SIZES):
        return ("transformers decodes a float32 model of this size at seconds per token on a small CPU, beyond the "
                "default run's 15 minutes: name it with --sizes to measure it anyway")
    return None


def points(p: Plan):
    """(size, method, engine, batch) in the order they are measured: one model load serves its engines and batches."""
    for size in p.sizes:
        for method in p.methods:
            for engine in p.engines:
                if engine in METHODS[method].engines:
                    for batch in p.batches:
                        yield size, method, engine, batch


# --- timing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    decode_ms: float  # per decoding step (one token for each sequence of the batch), median of the last round
    decode_ms_min: float
    decode_ms_max: float
    prefill_ms: float
    rounds: int
    stable: bool


def stable_timing(measure: Callable[[], tuple[float, float]], protocol: Protocol) -> Timing:
    """Call ``measure() -> (prefill ms, decode ms per step)`` in rounds of ``protocol.repeats`` until the medians
    of two consecutive rounds agree within ``protocol.tolerance`` (the first rounds double as warm-up: a first
    call, a compilation, a cold cache), at most ``protocol.max_rounds`` rounds; the last round is reported."""
    previous = None
    for round_number in range(1, protocol.max_rounds + 1):
        runs = [measure() for _ in range(protocol.repeats)]
        decode = [d for _, d in runs]
        median = statistics.median(decode)
        stable = previous is not None and abs(median - previous) <= protocol.tolerance * median
        if stable or round_number == protocol.max_rounds:
            return Timing(median, min(decode), max(decode), statistics.median(p for p, _ in runs), round_number,
                          stable)
        previous = median
    raise AssertionError("unreachable")


def prompt_ids(vocab_size: int, batch: int, prompt_tokens: int, seed: int = 0) -> torch.Tensor:
    """A fixed prompt of random token ids, [batch, prompt_tokens]: the speed of a step does not depend on the text."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(min(vocab_size, 32000), (batch, prompt_tokens), generator=generator)


def transformers_timing(model, batch: int, protocol: Protocol, engine: str) -> Timing:
    """``generate`` of 1 and of ``new_tokens`` tokens; the difference is ``new_tokens - 1`` decoding steps."""
    prompt = prompt_ids(model.config.vocab_size, batch, protocol.prompt_tokens).to(model.device)
    kwargs = {"pad_token_id": 0}
    if engine == "compiled":
        kwargs["cache_implementation"] = "static"
    n = protocol.new_tokens

    @torch.inference_mode()
    def measure() -> tuple[float, float]:
        one = evaluate._timed_generate(model, prompt, 1, kwargs)
        many = evaluate._timed_generate(model, prompt, n, kwargs)
        return 1000 * one, 1000 * (many - one) / (n - 1)

    return stable_timing(measure, protocol)


def llama_cpp_threads() -> int:
    """llama-cpp-python's default (as in quantlab.ggml.generate_with_llama_cpp): half the logical CPUs."""
    return max(1, (os.cpu_count() or 1) // 2)


def llama_cpp_timing(llm, protocol: Protocol) -> Timing:
    """Prefill the prompt with one ``eval``, then time ``new_tokens`` single-token ``eval`` calls (each one
    decoding step; the token fed does not change the work). ``reset`` before each run rewinds the KV cache."""
    prompt = prompt_ids(llm.n_vocab(), 1, protocol.prompt_tokens)[0].tolist()

    def measure() -> tuple[float, float]:
        llm.reset()
        with evaluate.timed() as prefill:
            llm.eval(prompt)
        with evaluate.timed() as decode:
            for token in prompt[:protocol.new_tokens]:
                llm.eval([token])
        return 1000 * prefill.seconds, 1000 * decode.seconds / protocol.new_tokens

    return stable_timing(measure, protocol)


# --- the floor ------------------------------------------------------------------------------------------------


def bytes_read_per_step(weight_bytes: int, config) -> int:
    """Weight bytes one decoding step reads: all of them, less the input embedding when it is not also the head
    (a step reads one of its rows). The KV cache of a short prompt adds little and is left out."""
    if getattr(config, "tie_word_embeddings", False):
        return weight_bytes
    embedding = config.vocab_size * config.hidden_size
    return weight_bytes - embedding * 2  # the sweep keeps embeddings in 16 bit in every method


@dataclass(frozen=True)
class FloorFit:
    """``ms = overhead_ms + bytes / bandwidth``, least squares over the points of one engine and method."""

    overhead_ms: float
    bandwidth_gb_s: float
    n_points: int

    def ms(self, n_bytes: float) -> float:
        return self.overhead_ms + n_bytes / (self.bandwidth_gb_s * 1e6)


def fit_floor(n_bytes: list[float], ms: list[float]) -> FloorFit | None:
    """Fit the per-step overhead and the effective bandwidth from (bytes read, ms per step) points of several
    model sizes (numpy's least-squares line); None with fewer than two sizes or a slope that is not positive."""
    if len(set(n_bytes)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(n_bytes, float), np.asarray(ms, float), 1)
    if slope <= 0:
        return None
    return FloorFit(float(intercept), float(1 / (slope * 1e6)), len(n_bytes))


def fits(rows: list[dict]) -> dict[tuple[str, str, int], FloorFit]:
    """One :class:`FloorFit` per (engine, method, batch) measured at two or more sizes."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault((r["engine"], r["method"], r["batch"]), []).append(r)
    found = {key: fit_floor([r["bytes_per_step"] for r in g], [r["decode_ms"] for r in g])
             for key, g in groups.items()}
    return {key: fit for key, fit in found.items() if fit is not None}


def speedups(rows: list[dict]) -> list[dict]:
    """Decode speed of every quantized point against the 16-bit point of the same size, engine and batch."""
    base = {(r["size"], r["engine"], r["batch"]): r for r in rows if r.get("status") == "ok"
            and r["method"] == "baseline"}
    return [{"size": r["size"], "engine": r["engine"], "batch": r["batch"], "method": r["method"],
             "speedup": base[key]["decode_ms"] / r["decode_ms"]}
            for r in rows if r.get("status") == "ok" and r["method"] != "baseline"
            and (key := (r["size"], r["engine"], r["batch"])) in base]


# --- loading --------------------------------------------------------------------------------------------------


def _dtype(device: str, method: str) -> torch.dtype:
    if method == "fp8":
        return torch.bfloat16  # torchao's float8 matmul takes bf16 activations
    return models.default_dtype(device)


def load_transformers(size: str, method: str, device: str):
    """The model of ``size`` in ``method`` on ``device``, for the transformers engines."""
    from transformers import AutoModelForCausalLM

    dtype = _dtype(device, method)
    shape = shapes.get(size)
    if method in ("baseline", "fp8"):
        if shape.random:
            model = shapes.build_random(size, device, dtype)
        else:
            model = models.load(dtype=dtype, device=device, verbose=False)[0]
        if method == "fp8":
            _quantize_fp8(model)
        return model
    if method == "gptq-int4":
        return AutoModelForCausalLM.from_pretrained(random_gptq_checkpoint(size), device_map=device,
                                                    dtype=torch.float16, quantization_config=gptq_config(size, device)
                                                    ).eval()
    settings = methods.Settings(device=device, dtype=str(dtype).removeprefix("torch."))
    config = {"bnb-int8": methods.bnb_int8_config, "bnb-nf4": methods.bnb_4bit_config("nf4", True)}[method](settings)
    with methods.logger_level("bitsandbytes.backends.cpu.ops", logging.ERROR):
        return AutoModelForCausalLM.from_pretrained(shapes.checkpoint(size), device_map=device, dtype=dtype,
                                                    quantization_config=config).eval()


def _quantize_fp8(model) -> None:
    """torchao's float8 dynamic activation + weight quantization, per row, on every Linear but the head."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda module, name: isinstance(module, torch.nn.Linear) and "lm_head" not in name)


def gptq_config(size: str, device: str):
    from transformers import GPTQConfig

    return GPTQConfig(bits=4, group_size=methods.group_size_for(shapes.config(size)), sym=True, desc_act=False,
                      format="gptq_v2", backend="marlin" if device.startswith("cuda") else "torch")


ZEROS_8 = np.array([0x88888888], dtype=np.uint32).view(np.int32)[0]  # zero point 8 in all 8 nibbles of an int32
RANDOM_SCALE = 0.02 / 4.6  # int4 codes 0-15 around the zero point 8, times this: weights of about N(0, 0.02)


def _gptq_tensors(rows: int, cols: int, group: int, generator) -> dict[str, torch.Tensor]:
    """One Linear in GPTQ's layout (gptq_v2 zero points): eight codes per int32 along the input dimension."""
    device = generator.device
    return {"qweight": torch.randint(-2**31, 2**31 - 1, (rows // 8, cols), dtype=torch.int32, device=device,
                                     generator=generator),
            "qzeros": torch.full((rows // group, cols // 8), int(ZEROS_8), dtype=torch.int32),
            "scales": torch.full((rows // group, cols), RANDOM_SCALE, dtype=torch.float16),
            "g_idx": torch.arange(rows, dtype=torch.int32) // group}


def _awq_tensors(rows: int, cols: int, group: int, generator) -> dict[str, torch.Tensor]:
    """One Linear in AWQ's GEMM layout: eight codes per int32 along the output dimension, a zero point per group."""
    return {"qweight": torch.randint(-2**31, 2**31 - 1, (rows, cols // 8), dtype=torch.int32,
                                     device=generator.device, generator=generator),
            "qzeros": torch.full((rows // group, cols // 8), int(ZEROS_8), dtype=torch.int32),
            "scales": torch.full((rows // group, cols), RANDOM_SCALE, dtype=torch.float16)}


@torch.no_grad()
def _random_int4_checkpoint(size: str, kind: str, linear_tensors, quantization_config) -> Path:
    """Write once in the cache: every quantized Linear of shape ``size`` as ``linear_tensors(in, out, group,
    generator)``, everything else from :func:`shapes.build_random` (or the default model's real weights), and
    ``quantization_config(group)`` in config.json."""
    from safetensors.torch import save_file

    target = models.cache_dir() / "shapes" / f"{size}-{kind}-random"
    if (target / "config.json").is_file():
        return target
    device = models.default_device()
    group = methods.group_size_for(shapes.config(size))

    def write(folder: Path) -> None:
        model = shapes.build_random(size, device, torch.float16) if shapes.get(size).random else \
            models.load(dtype=torch.float16, device=device, verbose=False)[0]
        quantized = {name: m for name, m in model.named_modules() if memory.is_quantized_by_default(name, m)}
        tensors = {n: t for n, t in model.state_dict().items() if n.removesuffix(".weight") not in quantized}
        if model.config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)  # the embedding is the head
        generator = torch.Generator(device=device).manual_seed(1)
        for name, module in quantized.items():
            for suffix, tensor in linear_tensors(module.in_features, module.out_features, group, generator).items():
                tensors[f"{name}.{suffix}"] = tensor
        tensors = {n: t.contiguous().cpu() for n, t in tensors.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        model.config.quantization_config = quantization_config(group)
        shapes.save_beside(model, folder, size)

    shapes.write_once(target, write)
    return target


def random_gptq_checkpoint(size: str) -> Path:
    """A GPTQ int4 checkpoint of shape ``size`` with random packed weights, written once in the cache.

    Calibrating GPTQ on an 8B model takes longer than a whole GPU run; speed needs only the layout. So each
    quantized Linear gets random ``qweight`` (eight 4-bit codes per int32), symmetric zero points (8, as
    gptq_v2 stores them), fp16 scales giving weights of about N(0, 0.02), and ``g_idx`` in group order: what
    gptqmodel's ``RTNConfig(format="gptq_v2")`` writes. transformers (Marlin, gptqmodel) and vLLM load it.
    Speed and memory only: random weights have no quality.
    """
    return _random_int4_checkpoint(size, "gptq-int4", _gptq_tensors,
                                   lambda group: gptq_config(size, "cuda").to_dict())


def random_awq_checkpoint(size: str) -> Path:
    """An AWQ int4 checkpoint of shape ``size`` with random packed weights (AWQ's GEMM layout, zero point 8 in
    every group), written once in the cache, for vLLM (which converts it for its AWQ Marlin kernel); transformers
    would need autoawq to load it. Speed and memory only: random weights have no quality."""
    return _random_int4_checkpoint(size, "awq-int4", _awq_tensors, lambda group: {
        "quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"})


# --- one point ------------------------------------------------------------------------------------------------


def _point_row(size: str, method: str, engine: str, batch: int) -> dict:
    shape = shapes.get(size)
    return {"size": size, "model": shape.label, "random_weights": shape.random, "method": method, "engine": engine,
            "batch": batch}


def _after_load(device: str, load_peak: memory.Peak) -> float | None:
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / memory.MB
    return None if load_peak.rss_delta_bytes is None else load_peak.rss_delta_bytes / memory.MB


def _peak(device: str, peak: memory.Peak) -> float | None:
    value = peak.accelerator_bytes if device.startswith("cuda") else peak.rss_peak_bytes
    return None if value is None else value / memory.MB


def measure_transformers(model, row: dict, device: str, protocol: Protocol, bandwidth: float) -> dict:
    with memory.measure_peak(device) as peak:
        timing = transformers_timing(model, row["batch"], protocol, row["engine"])
    weight = memory.weight_bytes(model)
    row.update(status="ok", params=memory.count_parameters(model), weight_mb=weight / memory.MB,
               bits_per_weight=8 * weight / memory.count_parameters(model),
               dtype=str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
               kernel=compare.kernel_name(model), peak_mb=_peak(device, peak),
               bytes_per_step=bytes_read_per_step(weight, model.config))
    if row["engine"] == "compiled":
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not quantizer.is_compileable:
            row["note"] = (f"not compiled: transformers does not compile {type(quantizer).__name__} models; "
                           "static KV cache only")
    return _with_timing(row, timing, bandwidth)


def measure_llama_cpp(row: dict, protocol: Protocol, bandwidth: float) -> dict:
    from quantlab import ggml

    path = shapes.gguf_file(row["size"], GGUF_TYPE[row["method"]])
    llama_cpp = ggml._llama_cpp()
    threads = llama_cpp_threads()
    with memory.measure_peak("cpu") as load_peak:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=protocol.prompt_tokens + protocol.new_tokens + 8,
                              n_batch=protocol.prompt_tokens, n_threads=threads, n_threads_batch=threads,
                              verbose=False, seed=0)
    try:
        with memory.measure_peak("cpu") as peak:
            timing = llama_cpp_timing(llm, protocol)
    finally:
        llm.close()
    tensors = ggml.tensor_table(path)
    weight = sum(t.n_bytes for t in tensors)
    embedding = next(t.n_bytes for t in tensors if t.name == "token_embd.weight")
    untied = any(t.name == "output.weight" for t in tensors)
    n_params = sum(t.n_weights for t in tensors)
    row.update(status="ok", params=n_params, weight_mb=weight / memory.MB, bits_per_weight=8 * weight / n_params,
               dtype=GGUF_TYPE[row["method"]], kernel=f"llama.cpp CPU, {threads} threads",
               load_mb=None if load_peak.rss_delta_bytes is None else load_peak.rss_delta_bytes / memory.MB,
               peak_mb=_peak("cpu", peak), bytes_per_step=weight - embedding if untied else weight,
               file_mb=path.stat().st_size / memory.MB)
    return _with_timing(row, timing, bandwidth)


def _with_timing(row: dict, timing: Timing, bandwidth: float) -> dict:
    floor_ms = evaluate.decode_floor_ms(row["bytes_per_step"], bandwidth)
    row.update(decode_ms=timing.decode_ms, decode_ms_min=timing.decode_ms_min, decode_ms_max=timing.decode_ms_max,
               tok_s=1000 * row["batch"] / timing.decode_ms, prefill_ms=timing.prefill_ms, rounds=timing.rounds,
               stable=timing.stable, floor_ms=floor_ms, floor_fraction=floor_ms / timing.decode_ms)
    if not timing.stable:
        _append_note(row, f"not stable within {Protocol.tolerance:.0%} after {timing.rounds} rounds")
    return row


def _append_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def _free(model=None) -> None:
    del model
    gc.collect()
    torch.compiler.reset()  # compiled graphs of one model hold its shapes; the next model compiles its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the run --------------------------------------------------------------------------------------------------

RUN_ERRORS = (QuantlabError, RuntimeError, ValueError, ImportError, OSError, TypeError, AssertionError)


def run(sizes=None, methods_csv=None, engines=None, batch=None, out_dir="sweep", device=None,
        verbose=True) -> list[dict]:
    """Measure every point of the plan, writing results.json/.md after each; returns the rows. ``verbose`` prints
    a line per point and the table at the end."""
    p = plan(sizes, methods_csv, engines, batch, device)
    out = Path(out_dir)
    check_out_dir(out)
    protocol = Protocol.for_device(p.device)
    with torch_threads(llama_cpp_threads()):
        bandwidth = evaluate.memory_bandwidth(device="cuda" if p.device.startswith("cuda") else "cpu")
    meta = {"device": p.device, "hardware": env.hardware(), "machine": platform.node(), "plan": asdict(p),
            "protocol": asdict(protocol), "copy_bandwidth_gb_s": bandwidth / 1e9, "load_average": os.getloadavg(),
            "cpu_count": os.cpu_count(), "cpu_threads": llama_cpp_threads(),
            "versions": {d: env.package_version(d) for d in env.PACKAGES},
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "note": f"random-weight shapes: {shapes.RANDOM_LABEL}"}
    started, rows = time.time(), []

    def save() -> None:
        meta.update(wall_seconds=time.time() - started, load_average_end=os.getloadavg())
        write_outputs(rows, meta, out)

    say = print if verbose else lambda *args: None
    say(f"quantlab sweep on {p.device}: copy bandwidth {bandwidth / 1e9:.1f} GB/s; {shapes.RANDOM_LABEL} "
        "(every shape but the default model)")
    with _quiet(), torch_threads(llama_cpp_threads()):
        for (size, method), group in _by_model(points(p)):
            _measure_model(p, size, method, group, protocol, bandwidth, rows, save, say)
    say(markdown_table(rows))
    return rows


def _by_model(all_points):
    groups: dict[tuple[str, str], list] = {}
    for point in all_points:
        groups.setdefault(point[:2], []).append(point)
    return groups.items()


def _measure_model(p: Plan, size, method, group, protocol, bandwidth, rows, save, say) -> None:
    """One model load for every transformers point of (size, method); llama.cpp loads its file per point."""
    model, load = None, {}
    try:
        for _, _, engine, batch in group:
            row = _point_row(size, method, engine, batch)
            reason = skip_reason(p, size, method, engine, batch)
            started = time.time()
            try:
                if reason:
                    row["status"] = f"skipped: {reason}"
                elif engine == "llama.cpp":
                    measure_llama_cpp(row, protocol, bandwidth)
                else:
                    if model is None:
                        with memory.measure_peak(p.device) as load_peak:
                            model = load_transformers(size, method, p.device)
                        load = {"load_mb": _after_load(p.device, load_peak), "load_s": time.time() - started}
                    row.update(load)
                    measure_transformers(model, row, p.device, protocol, bandwidth)
            except RUN_ERRORS as err:
                row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            if not reason:
                row["wall_s"] = time.time() - started
                say(f"  {size} {method} {engine} batch {batch}: {_short(row)}")
            rows.append(row)
            save()
    finally:
        _free(model)


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    return f"{row['decode_ms']:.2f} ms/step, {row['tok_s']:.1f} tok/s (floor {row['floor_ms']:.2f} ms)"


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's CPU threads set to ``n`` for the duration (the sweep gives torch as many as llama.cpp), then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet():
    """The compare job's quiet loggers and its one progress bar (no bar per model load)."""
    with compare._one_progress_bar(), contextlib.ExitStack() as stack:
        for name in compare.QUIET_LOGGERS:
            stack.enter_context(methods.logger_level(name, logging.ERROR))
        yield


# --- outputs --------------------------------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("size", "size", "{}"), ("method", "method", "{}"), ("engine", "engine", "{}"), ("batch", "batch", "{}"),
    ("dtype", "format", "{}"), ("params", "params", "{:,}"), ("bits_per_weight", "bits/weight", "{:.2f}"),
    ("weight_mb", "weight MB", "{:.0f}"), ("load_mb", "after load MB", "{:.0f}"), ("peak_mb", "peak MB", "{:.0f}"),
    ("decode_ms", "decode ms/step", "{:.2f}"), ("spread", "min-max ms", "{}"), ("tok_s", "tok/s", "{:.1f}"),
    ("prefill_ms", "prefill ms", "{:.1f}"), ("floor_ms", "floor ms", "{:.3f}"),
    ("floor_fraction", "floor / measured", "{:.1%}"), ("rounds", "rounds", "{}"), ("kernel", "kernel", "{}"),
]


def _cells(r: dict) -> list[str]:
    r = {**r, "spread": f"{r['decode_ms_min']:.2f}-{r['decode_ms_max']:.2f}" if "decode_ms_min" in r else None}
    return ["" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in COLUMNS]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r["status"] == "ok":
            lines.append("| " + " | ".join(_cells(r)) + " |")
        else:
            lines.append(f"| {r['size']} | {r['method']} | {r['engine']} | {r['batch']} | {r['status']} |"
                         + " |" * (len(COLUMNS) - 5))
    return "\n".join(lines)


def fits_table(rows: list[dict]) -> str:
    lines = ["| engine | method | batch | overhead ms/step | effective bandwidth GB/s | sizes |",
             "|---|---|---|---|---|---|"]
    for (engine, method, batch), fit in fits(rows).items():
        lines.append(f"| {engine} | {method} | {batch} | {fit.overhead_ms:.2f} | {fit.bandwidth_gb_s:.1f} | "
                     f"{fit.n_points} |")
    return "\n".join(lines)


def speedup_table(rows: list[dict]) -> str:
    lines = ["| size | engine | batch | method | decode speed vs 16-bit |", "|---|---|---|---|---|"]
    lines += [f"| {s['size']} | {s['engine']} | {s['batch']} | {s['method']} | {s['speedup']:.2f}x |"
              for s in speedups(rows)]
    return "\n".join(lines)


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    """results.json, results.md and the two plots, each written to a temporary file and renamed (atomic)."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": rows, "fits": {"|".join(map(str, k)): asdict(v) for k, v in fits(rows).items()},
               "speedups": speedups(rows)}
    compare.write_atomic(out / "results.json", json.dumps(payload, indent=2, default=str))
    notes = [f"- **{r['size']} {r['method']} {r['engine']} batch {r['batch']}**: {r['note']}"
             for r in rows if r.get("note")]
    text = [f"# quantlab sweep on {meta['hardware'].get('gpu', 'CPU')} ({meta['device']})", "",
            f"{meta['date']}; copy bandwidth {meta['copy_bandwidth_gb_s']:.1f} GB/s; load average at start "
            f"{meta['load_average'][0]:.2f} on {meta['cpu_count']} CPUs (above the CPU count: the machine was shared "
            "and the times are noisy); protocol " + json.dumps(meta["protocol"]) + ".", "",
            f"Every shape but {shapes.SHAPES['smollm2-135m'].model}: {shapes.RANDOM_LABEL}. Floor: the bytes one "
            "step reads at the copy bandwidth.", "", markdown_table(rows), "", "Decode speed against 16-bit "
            "(same size, engine, batch):", "", speedup_table(rows), "",
            "Fit `ms = overhead + bytes / bandwidth` over model sizes:", "", fits_table(rows), "", *notes]
    compare.write_atomic(out / "results.md", "\n".join(text) + "\n")
    figures = {"speed_vs_size.png": plot.sweep_speed(rows, bandwidth_gb_s=meta["copy_bandwidth_gb_s"]),
               "memory_vs_size.png": plot.sweep_memory(rows)}
    for name, fig in figures.items():
        plot.save_for_slides(fig, name, out, dpi=120)
        plt.close(fig)
