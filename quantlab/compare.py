"""``quantlab compare``: every method, one model, one text, one harness (notebooks/09 and 10).

For each method of :mod:`quantlab.methods` the job loads (quantizing once, then from the cache),
measures weight memory, peak memory, on-disk size, perplexity, KL divergence and top-1 agreement
against the baseline, prefill/decode speed and quantization time, and writes ``results.json``,
``results.md`` and three PNG plots to the output folder.
"""

import gc
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from quantlab import env, evaluate, memory, methods, models, plot
from quantlab.errors import QuantlabError


@dataclass(frozen=True)
class Protocol:
    """How much text and how many repeats; the defaults fit 15 minutes on 2 CPU cores."""

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
        return cls(kl_tokens=1024)


def settings_for(device: str, quick: bool, config) -> methods.Settings:
    common = {"device": device, "dtype": str(models.default_dtype(device)).removeprefix("torch."),
              "group_size": methods.group_size_for(config)}
    if quick:
        return methods.Settings(**common, calib_samples=16, calib_seq_len=256)
    if device == "cpu":  # GPTQ/AWQ calibration is the slowest step on a CPU
        return methods.Settings(**common, calib_samples=32, calib_seq_len=512)
    return methods.Settings(**common)


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


def measure_method(method: methods.Method, src: models.ModelSource, settings: methods.Settings,
                   protocol: Protocol, tokenizer, eval_ids, baseline: dict) -> dict:
    """Build one method's model and measure it; returns one result row."""
    row = {"method": method.name, "description": method.description}
    with memory.measure_peak(settings.device) as load_peak:
        built = method.build(src, settings)
    model = built.model
    keep_dtype = model.get_input_embeddings().weight.dtype
    weight = memory.weight_bytes(model)
    fmt = method.weight_format(settings)
    theoretical = memory.estimate_model_bytes(baseline["inventory"], fmt, keep_dtype.itemsize)
    row.update(
        status="ok", kernel=kernel_name(model), dtype=str(keep_dtype).removeprefix("torch."),
        weight_mb=weight / memory.MB, theoretical_mb=theoretical / memory.MB,
        bits_per_weight=8 * weight / baseline["n_parameters"],
        disk_mb=memory.disk_bytes(built.checkpoint) / memory.MB if built.checkpoint else None,
        quantize_s=built.quantize_seconds, note=built.note,
    )
    if abs(weight - theoretical) > 0.05 * theoretical and not built.note:
        row["note"] = f"measured differs from the {fmt.name} estimate by >5%"
    with memory.measure_peak(settings.device) as eval_peak:
        row["ppl"] = evaluate.perplexity(model, eval_ids, protocol.seq_len).ppl
        kl = evaluate.kl_divergence(model, baseline["logprobs"], eval_ids, protocol.seq_len)
    row.update(kl=kl.mean_kl, top1=kl.top1_agreement)
    peaks = [p.accelerator_bytes if settings.device != "cpu" else p.rss_peak_bytes for p in (load_peak, eval_peak)]
    row["peak_mb"] = max(p for p in peaks if p is not None) / memory.MB if any(peaks) else None
    speed = evaluate.measure_speed(model, tokenizer, protocol.prompt_tokens, protocol.new_tokens,
                                   repeats=protocol.repeats)
    row.update(prefill_tok_s=speed.prefill_tok_s, decode_tok_s=speed.decode_tok_s)
    if baseline.get("compile_decode"):
        compiled = evaluate.measure_speed(model, tokenizer, protocol.prompt_tokens, protocol.new_tokens,
                                          repeats=protocol.repeats,
                                          generate_kwargs={"cache_implementation": "static"})
        row["decode_tok_s_static_compiled"] = compiled.decode_tok_s
    _free(model, built)
    return row


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
    """Run the comparison and write results.json, results.md and plots into ``out_dir``."""
    from transformers import AutoConfig, AutoTokenizer

    from quantlab import data

    # bitsandbytes logs "MatMul8bitLt: inputs will be cast ... to float16" on every int8 matmul
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    device = device or models.default_device()
    names = methods_csv.split(",") if methods_csv else list(methods.REGISTRY)
    chosen = [methods.get(n.strip()) for n in names]
    src = models.resolve(model_id)
    tokenizer = AutoTokenizer.from_pretrained(src.path)
    protocol = Protocol.for_device(device, quick)
    settings = settings_for(device, quick, AutoConfig.from_pretrained(src.path))
    eval_ids = data.eval_token_ids(tokenizer, protocol.eval_tokens, source=eval_source)
    started = time.time()
    baseline = _baseline_reference(src, settings, protocol, eval_ids, compile_decode)
    rows = []
    for method in (bar := tqdm(chosen, desc="methods", unit="method")):
        bar.set_postfix_str(method.name)
        reason = method.unavailable_reason(device)
        if reason:
            rows.append({"method": method.name, "description": method.description, "status": f"skipped: {reason}"})
            continue
        try:
            rows.append(measure_method(method, src, settings, protocol, tokenizer, eval_ids, baseline))
        except (QuantlabError, RuntimeError, ValueError, ImportError, OSError) as err:
            rows.append({"method": method.name, "description": method.description,
                         "status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}"})
    _add_deltas(rows)
    meta = {
        "model": str(src), "eval_text": eval_source, "device": device, "protocol": asdict(protocol),
        "settings": asdict(settings), "hardware": env.hardware(), "machine": platform.node(),
        "versions": {d: env.package_version(d) for d in env.PACKAGES}, "wall_seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_outputs(rows, meta, Path(out_dir))
    print(markdown_table(rows))
    return rows


def _add_deltas(rows: list[dict]) -> None:
    base = next((r for r in rows if r["method"] == "baseline" and r.get("ppl")), None)
    for r in rows:
        if base and r.get("ppl") is not None:
            r["delta_ppl_pct"] = 100 * (r["ppl"] - base["ppl"]) / base["ppl"]


COLUMNS = [  # (key, header, format)
    ("method", "method", "{}"), ("bits_per_weight", "bits/weight", "{:.2f}"), ("weight_mb", "weight MB", "{:.1f}"),
    ("theoretical_mb", "estimate MB", "{:.1f}"), ("peak_mb", "peak MB", "{:.0f}"), ("disk_mb", "disk MB", "{:.1f}"),
    ("ppl", "perplexity", "{:.3f}"), ("delta_ppl_pct", "Δppl %", "{:+.2f}"), ("kl", "KL", "{:.4f}"),
    ("top1", "top-1 agree", "{:.3f}"), ("prefill_tok_s", "prefill tok/s", "{:.0f}"),
    ("decode_tok_s", "decode tok/s", "{:.1f}"), ("quantize_s", "quantize s", "{:.1f}"), ("kernel", "kernel", "{}"),
]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * (len(COLUMNS) - 2))
            continue
        cells = ["" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "results.json", json.dumps({"meta": meta, "results": rows}, indent=2, default=str))
    notes = [f"- **{r['method']}**: {r['note']}" for r in rows if r.get("note")]
    text = [f"# quantlab compare: {meta['model']}", "",
            f"{meta['date']} on {meta['hardware'].get('gpu', 'CPU')} ({meta['device']}); eval text "
            f"{meta['eval_text']}, protocol {meta['protocol']}.", "", markdown_table(rows), "", *notes]
    _write_atomic(out / "results.md", "\n".join(text) + "\n")
    for draw, name in ((plot.ppl_vs_bits, "ppl_vs_bits.png"), (plot.memory_bars, "memory.png"),
                       (plot.decode_speed_bars, "decode_speed.png")):
        plt.close(draw(rows, out / name))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
