"""``quantlab compare``: every method, one model, one text, one harness (notebooks/09 and 10).

For each method of :mod:`quantlab.methods` the job loads (quantizing once, then from the cache),
measures weight memory, peak memory, on-disk size, perplexity, KL divergence and top-1 agreement
against the baseline, prefill/decode speed and quantization time (on a GPU also the two floors under the
decode time), and writes ``results.json``, ``results.md`` and three PNG plots to the output folder.

On a CPU the job is sized for `make run` on 2 cores: a reduced calibration for GPTQ/AWQ/RTN
(:data:`REDUCED_CALIBRATION`, smaller still for AWQ: :data:`CPU_CALIBRATION`; written into the outputs) and a
shorter speed protocol.
"""

import contextlib
import gc
import json
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from huggingface_hub.utils import are_progress_bars_disabled
from tqdm.auto import tqdm

from quantlab import env, evaluate, memory, methods, models, plot
from quantlab.errors import QuantlabError


@dataclass(frozen=True)
class Protocol:
    """How much text and how many repeats (see :meth:`for_device`)."""

    seq_len: int = 512
    eval_tokens: int = 2048
    kl_tokens: int = 2048
    prompt_tokens: int = 128
    new_tokens: int = 32
    repeats: int = 3

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> "Protocol":
        if quick:
            return cls(seq_len=256, eval_tokens=512, kl_tokens=512, prompt_tokens=32, new_tokens=8, repeats=1)
        if device.startswith("cuda"):
            return cls(eval_tokens=16384, kl_tokens=4096, prompt_tokens=512, new_tokens=64, repeats=3)
        # A CPU decodes the default model at 5-15 tokens/s in float32, so speed runs dominate the time per
        # method: shorter runs, 2 repeats (plus a warm-up). 25-80 s per method (loading included) on one busy
        # core: `make run` took 13.1 minutes on a fresh clone, GPTQ's 3-minute calibration included.
        return cls(kl_tokens=1024, prompt_tokens=64, new_tokens=16, repeats=2)


# Calibration on a CPU (and in quick runs): 16 sequences of 256 tokens, as in notebooks 03 and 05, so that every
# notebook, test and `make run` shares one cached GPTQ/AWQ/RTN checkpoint. GPTQ calibrates each of the 30
# blocks of the default model over every sequence several times, in float32: about 3 minutes on 2 idle
# cores at this size (32 x 512 took 4 times as long, too long for `make run`'s 15 minutes).
REDUCED_CALIBRATION = {"calib_samples": 16, "calib_seq_len": 256}

# Smaller still, per method, on a CPU: gptqmodel's AWQ costs about 1.5 s per calibration token on 2 cores, most of
# it in its clipping search (16 x 256 tokens would take over an hour), so 2 rows of 32 tokens: 100 s measured on
# this series' 2-core machine. Notebook 05 takes its whole-model calibration from here, so that it and `make run`
# make one checkpoint.
CPU_CALIBRATION = {"awq-int4": {"calib_samples": 2, "calib_seq_len": 32}}


def settings_for(device: str, quick: bool, config, method: str | None = None) -> methods.Settings:
    """The settings ``method``'s quantized checkpoint is made with: the library defaults (128 x 512 calibration
    tokens) on a GPU, a reduced calibration on a CPU or in quick runs (REDUCED_CALIBRATION, or the method's own in
    CPU_CALIBRATION)."""
    common = {"device": device, "dtype": str(models.default_dtype(device)).removeprefix("torch."),
              "group_size": methods.group_size_for(config)}
    if quick or not device.startswith("cuda"):
        return methods.Settings(**common, **{**REDUCED_CALIBRATION, **CPU_CALIBRATION.get(method, {})})
    return methods.Settings(**common)


def calibration_note(settings: methods.Settings) -> str:
    """One line for the outputs: how much calibration text GPTQ/AWQ saw, and whether that is reduced."""
    full = methods.Settings()
    text = (f"calibration: {settings.calib_samples} x {settings.calib_seq_len} tokens of {settings.calib_source} "
            f"(seed {settings.seed}), int4 group size {settings.group_size}")
    if (settings.calib_samples, settings.calib_seq_len) != (full.calib_samples, full.calib_seq_len):
        own = "; ".join(f"{name} {c['calib_samples']} x {c['calib_seq_len']}" for name, c in CPU_CALIBRATION.items())
        text += (f" ({own}); reduced from the GPU setting of {full.calib_samples} x {full.calib_seq_len} to keep CPU "
                 "calibration to minutes, so GPTQ/AWQ may score somewhat worse than with full calibration")
    return text


def kernel_name(model: torch.nn.Module) -> str:
    """Class name of the layer that replaced the first q_proj (or any Linear): which kernel runs."""
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "c_attn", "query_key_value")):
            return type(module).__name__
    return "Linear"


def _free(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def made_before(checkpoint: Path | None, started: float) -> bool:
    """Whether a method's checkpoint (folder or file) was on disk before its build started: reused from the cache,
    by an earlier run or by a notebook that made it with the same settings (notebooks/03, 05)."""
    return checkpoint is not None and checkpoint.exists() and checkpoint.stat().st_mtime < started


def cache_state(built: methods.Built, started: float) -> str | None:
    """"reused" or "made" for a quantized checkpoint in the cache; None where the method keeps none: the baseline
    and the KV-cache methods read the float checkpoint itself, bitsandbytes and HQQ quantize on every load."""
    if built.quantize_seconds is None or built.checkpoint is None or not built.checkpoint.exists():
        return None
    return "reused" if made_before(built.checkpoint, started) else "made"


def measure_method(method: methods.Method, src: models.ModelSource, settings: methods.Settings,
                   protocol: Protocol, tokenizer, eval_ids, baseline: dict) -> dict:
    """Build one method's model and measure it; returns one result row."""
    row = {"method": method.name, "description": method.description}
    started = time.time()
    with memory.measure_peak(settings.device) as load_peak:
        built = method.build(src, settings)
    cache = cache_state(built, started)
    model = built.model
    keep_dtype = model.get_input_embeddings().weight.dtype
    weight = memory.weight_bytes(model)
    fmt = method.weight_format(settings)
    theoretical = memory.estimate_model_bytes(baseline["inventory"], fmt, keep_dtype.itemsize)
    row.update(
        status="ok", kernel=kernel_name(model), dtype=str(keep_dtype).removeprefix("torch."),
        weight_mb=weight / memory.MB, theoretical_mb=theoretical / memory.MB,
        bits_per_weight=8 * weight / baseline["n_parameters"],
        # what the weights take where they are stored: the GGUF file's tensors for GGUF, else as loaded
        stored_bits_per_weight=8 * (built.stored_bytes or weight) / baseline["n_parameters"],
        disk_mb=None if built.disk_size() is None else built.disk_size() / memory.MB,
        quantize_s=built.quantize_seconds, cache=cache,
        note="; ".join(n for n in (built.note,
                                   cache == "reused" and f"reused the cached checkpoint {built.checkpoint.name}") if n),
    )
    if abs(weight - theoretical) > 0.05 * theoretical and not built.note:
        row["note"] = "; ".join(n for n in (row["note"], f"measured differs from the {fmt.name} estimate by >5%") if n)
    with memory.measure_peak(settings.device) as eval_peak:
        row["ppl"] = evaluate.perplexity(model, eval_ids, protocol.seq_len).ppl
        kl = evaluate.kl_divergence(model, baseline["logprobs"], eval_ids, protocol.seq_len)
    row.update(kl=kl.mean_kl, top1=kl.top1_agreement)
    peaks = [p.accelerator_bytes if settings.device != "cpu" else p.rss_peak_bytes for p in (load_peak, eval_peak)]
    row["peak_mb"] = max(p for p in peaks if p is not None) / memory.MB if any(peaks) else None
    speed = evaluate.measure_speed(model, tokenizer, protocol.prompt_tokens, protocol.new_tokens,
                                   repeats=protocol.repeats)
    row.update(prefill_tok_s=speed.prefill_tok_s, decode_tok_s=speed.decode_tok_s)
    if settings.device.startswith("cuda"):  # the two floors under the decode time (evaluate.decode_floors)
        try:
            floors = evaluate.decode_floors(model, tokenizer, weight)
            row.update(decode_ms=speed.decode_ms_per_token, floor_bandwidth_ms=floors.bandwidth_ms,
                       floor_launch_ms=floors.launch_ms, kernels_per_token=floors.kernels_per_token)
        except (QuantlabError, RuntimeError) as err:
            _append_note(row, f"decode floors not measured: {err}")
    if baseline.get("compile_decode"):
        compiled = evaluate.measure_speed(model, tokenizer, protocol.prompt_tokens, protocol.new_tokens,
                                          repeats=protocol.repeats, warmup=2,  # compiling is not timed
                                          generate_kwargs={"cache_implementation": "static"})
        row["decode_tok_s_static_compiled"] = compiled.decode_tok_s
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and not quantizer.is_compileable:  # transformers then decodes uncompiled
            _append_note(row, "static-cache decode not compiled: transformers does not compile "
                              f"{type(quantizer).__name__} models")
    _free(model, built)
    return row


def _append_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def _baseline_reference(src, settings, protocol, eval_ids, compile_decode) -> dict:
    """What every method is compared with: the baseline's next-token log-probs and structure."""
    built = methods.get("baseline").build(src, settings)
    reference = {
        "logprobs": evaluate.baseline_logprobs(built.model, eval_ids, protocol.seq_len, protocol.kl_tokens),
        "n_parameters": memory.count_parameters(built.model),
        "inventory": memory.inventory(built.model),
        "compile_decode": compile_decode,
    }
    return reference


def run(model_id=None, methods_csv=None, eval_source="shakespeare", out_dir="results", quick=False,
        compile_decode=False, device=None) -> list[dict]:
    """Run the comparison (every method of the registry, or those of ``methods_csv``) and write results.json,
    results.md and plots into ``out_dir``."""
    from transformers import AutoConfig, AutoTokenizer

    from quantlab import data

    device = device or models.default_device()
    if compile_decode and not device.startswith("cuda"):
        raise QuantlabError("--compile measures the decode step transformers compiles on a CUDA GPU; this run is on "
                            f"{device}. Drop --compile, or run on a GPU.")
    chosen = chosen_methods(methods_csv)
    check_writable(Path(out_dir))  # before anything is measured, so that no result is lost
    src = models.resolve(model_id)
    tokenizer = AutoTokenizer.from_pretrained(src.path)
    protocol = Protocol.for_device(device, quick)
    config = AutoConfig.from_pretrained(src.path)
    settings = settings_for(device, quick, config)
    eval_ids = data.eval_token_ids(tokenizer, protocol.eval_tokens, source=eval_source)
    started = time.time()
    print(f"quantlab compare: {len(chosen)} methods on {src} ({device}); {calibration_note(settings)}")
    meta = {
        "model": str(src), "eval_text": eval_source, "device": device, "protocol": asdict(protocol),
        "settings": asdict(settings), "calibration": calibration_note(settings), "hardware": env.hardware(),
        "machine": platform.node(),
        "versions": {d: env.package_version(d) for d in env.PACKAGES}, "wall_seconds": 0.0,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    rows = []

    def save() -> None:  # after every method, so that an interrupted run keeps the methods it measured
        _add_deltas(rows)
        write_outputs(rows, {**meta, "wall_seconds": time.time() - started}, Path(out_dir))

    # huggingface_hub's documented switch (HF_HUB_DISABLE_PROGRESS_BARS=1), read before the run hides the per-load
    # bars: `make execute` sets it, so committed notebooks carry no bar (tqdm's notebook widget ignores TQDM_DISABLE)
    bars_hidden = are_progress_bars_disabled()
    with _one_progress_bar(), contextlib.ExitStack() as quiet:
        for name in QUIET_LOGGERS:
            quiet.enter_context(methods.logger_level(name, logging.ERROR))
        # optimum reads every module attribute when it swaps in GPTQ layers, the base model's loss_function too,
        # and transformers warns once that a base model has no loss type (notebooks/03)
        quiet.enter_context(methods.dropped_messages("transformers.modeling_utils", "loss_type=None"))
        baseline = _baseline_reference(src, settings, protocol, eval_ids, compile_decode)
        for method in (bar := tqdm(chosen, desc="methods", unit="method", disable=bars_hidden)):
            bar.set_postfix_str(method.name)
            if reason := method.unavailable_reason(device):
                rows.append({"method": method.name, "description": method.description, "status": f"skipped: {reason}"})
                save()
                continue
            method_started = time.time()
            try:
                rows.append(measure_method(method, src, settings_for(device, quick, config, method.name), protocol,
                                           tokenizer, eval_ids, baseline))
            except (QuantlabError, RuntimeError, ValueError, ImportError, OSError) as err:
                rows.append({"method": method.name, "description": method.description, "status": failure(err)})
            rows[-1]["wall_s"] = time.time() - method_started  # quantizing (unless cached), loading and measuring
            save()
    print(markdown_table(rows))
    print(_sentence(meta["calibration"]))
    print(reuse_line(rows))
    return rows


def reuse_line(rows: list[dict]) -> str:
    """Which methods loaded a checkpoint that was already in the cache, and which quantized now."""
    def named(state: str) -> str:
        return ", ".join(r["method"] for r in rows if r.get("cache") == state) or "none"

    return (f"Checkpoints reused from the cache: {named('reused')}; quantized and cached in this run: {named('made')} "
            "(bitsandbytes, FP8 and HQQ quantize on every load).")


def chosen_methods(methods_csv: str | None) -> list[methods.Method]:
    """The methods ``--methods`` names (comma-separated), every registered one for None; an empty name is refused."""
    if methods_csv is None:
        return list(methods.REGISTRY.values())
    names = [name.strip() for name in methods_csv.split(",")]
    if not all(names):
        raise QuantlabError(f"--methods {methods_csv!r} contains an empty method name. Give comma-separated names "
                            f"from {', '.join(methods.REGISTRY)}, e.g. --methods baseline,gptq-int4, or leave "
                            "--methods out to run them all.")
    return [methods.get(name) for name in names]


def check_writable(out: Path) -> None:
    """Create the output folder and write a file into it, or say why that fails, before hours are spent measuring."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise QuantlabError(f"The output folder {out} cannot be created or written to ({err.strerror or err}). "
                            "Pass --out a folder you can write to (it is created if missing).") from err


def failure(err: Exception) -> str:
    """A failed method's status: the error's first line (a QuantlabError's whole message: it ends with the fix)."""
    first = str(err).splitlines()[0] if str(err) else ""
    return f"failed: {type(err).__name__}: {first if isinstance(err, QuantlabError) else first[:300]}"


# Loggers kept at errors during a run, each for a notice that repeats or concerns nothing the run measures.
QUIET_LOGGERS = {
    "bitsandbytes.autograd._functions": 'every int8 matmul: "MatMul8bitLt: inputs will be cast ... to float16"',
    "torchao": "at its import (by transformers): two of its compiled kernels are for other builds",
    "torch.utils._pytree": "at torchao's import: it registers its enums the way torch 2.13 deprecates",
}


@contextlib.contextmanager
def _one_progress_bar():
    """Hide transformers' bar per model load: the run shows one bar, over the methods (each bar is a widget in a
    notebook, dozens of messages; notebooks/09 loads a model a dozen times)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _add_deltas(rows: list[dict]) -> None:
    base = next((r for r in rows if r["method"] == "baseline" and r.get("ppl")), None)
    for r in rows:
        if base and r.get("ppl") is not None:
            r["delta_ppl_pct"] = 100 * (r["ppl"] - base["ppl"]) / base["ppl"]


COLUMNS = [  # (key, header, format)
    ("method", "method", "{}"), ("bits_per_weight", "bits/weight", "{:.2f}"),
    ("stored_bits_per_weight", "stored bits/weight", "{:.2f}"), ("weight_mb", "weight MB", "{:.1f}"),
    ("theoretical_mb", "estimate MB", "{:.1f}"), ("peak_mb", "peak MB", "{:.0f}"), ("disk_mb", "disk MB", "{:.1f}"),
    ("ppl", "perplexity", "{:.3f}"), ("delta_ppl_pct", "Δppl %", "{:+.2f}"), ("kl", "KL", "{:.4f}"),
    ("top1", "top-1 agree", "{:.3f}"), ("prefill_tok_s", "prefill tok/s", "{:.0f}"),
    ("decode_tok_s", "decode tok/s", "{:.1f}"), ("quantize_s", "quantize s", "{:.1f}"), ("kernel", "kernel", "{}"),
]


OPTIONAL_COLUMNS = [  # shown only where measured: the floors on a GPU, the compiled decode with --compile
    ("decode_ms", "decode ms/token", "{:.2f}"), ("floor_bandwidth_ms", "bandwidth floor ms", "{:.3f}"),
    ("floor_launch_ms", "launch floor ms", "{:.2f}"),
    ("decode_tok_s_static_compiled", "decode tok/s (static cache, compiled)", "{:.1f}"),
]


def markdown_table(rows: list[dict]) -> str:
    columns = COLUMNS + [c for c in OPTIONAL_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * (len(columns) - 2))
            continue
        cells = ["" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_notes(rows: list[dict]) -> list[str]:
    """One bullet per method with a note (what a number means for it, or why it was not measured)."""
    return [f"- **{r['method']}**: {r['note']}" for r in rows if r.get("note")]


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", json.dumps({"meta": meta, "results": rows}, indent=2, default=str))
    text = [f"# quantlab compare: {meta['model']}", "",
            f"{meta['date']} on {meta['hardware'].get('gpu', 'CPU')} ({meta['device']}); eval text "
            f"{meta['eval_text']}, protocol {meta['protocol']}.", "", _sentence(meta["calibration"]), "",
            reuse_line(rows), "", markdown_table(rows), "", *markdown_notes(rows)]
    write_atomic(out / "results.md", "\n".join(text) + "\n")
    for draw, name in ((plot.ppl_vs_bits, "ppl_vs_bits.png"), (plot.memory_bars, "memory.png"),
                       (plot.decode_speed_bars, "decode_speed.png")):
        plt.close(draw(rows, out / name))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
