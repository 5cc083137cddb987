"""The compare job's figures (notebooks/09_memory_comparison); each returns a figure, saved when given a path.

:func:`save_for_slides` saves any notebook's figure as a PNG for slides (docs/teaching.md lists them).
"""

import os
import uuid
from pathlib import Path

import matplotlib.pyplot as plt


def _measured(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]


def _stored_bits(row: dict) -> float:
    # GGUF rows: the file's bits (transformers holds the weights dequantized); others: as loaded
    return row.get("stored_bits_per_weight") or row["bits_per_weight"]


def ppl_vs_bits(rows: list[dict], path: Path | None = None):
    """Perplexity against stored bits per weight: the lower-left corner is the Pareto front."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in _measured(rows, "ppl"):
        ax.scatter(_stored_bits(r), r["ppl"], s=40)
        ax.annotate(r["method"], (_stored_bits(r), r["ppl"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set(xlabel="stored bits per parameter (whole model, measured; GGUF: the file)",
           ylabel="perplexity (lower is better)", title="Quality against size")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _bars(rows: list[dict], key: str, label: str, title: str, path: Path | None):
    measured = _measured(rows, key)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(measured) + 1.5))
    ax.barh([r["method"] for r in measured], [r[key] for r in measured], color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel=label, title=title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def memory_bars(rows: list[dict], path: Path | None = None):
    return _bars(rows, "weight_mb", "weight memory (MB, measured)", "Memory of the loaded weights", path)


def decode_speed_bars(rows: list[dict], path: Path | None = None):
    return _bars(rows, "decode_tok_s", "decode tokens/s (batch 1, median)", "Decode speed", path)


def _save(fig, path: Path | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def save_for_slides(fig, name: str, folder: str | os.PathLike = "figures", dpi: int = 200) -> Path:
    """Save ``fig`` as a PNG for slides, ``folder/name`` (``.png`` added if missing), and return its path.

    The figure cells of notebooks 02-09 call it; docs/teaching.md lists the files. ``dpi=200`` and a tight
    bounding box give a sharp image without white margins. ``folder`` is created if missing; a relative one is
    relative to the working directory, which Jupyter sets to the notebook's folder (``notebooks/figures``).
    The PNG goes to a temporary file beside the target and is moved over it with ``os.replace``, so a reader
    never sees a half-written file and a failed save leaves the previous one in place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"  # same folder: os.replace is then atomic
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- the sweep's figures (notebooks/11_when_quantization_pays) --------------------------------------------------


def _series(rows: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    """Measured sweep points per (engine, method, batch), ordered by parameter count."""
    series: dict[tuple[str, str, int], list[dict]] = {}
    for r in sorted(_measured(rows, "decode_ms"), key=lambda r: r["params"]):
        series.setdefault((r["engine"], r["method"], r["batch"]), []).append(r)
    return series


def _label(key: tuple[str, str, int], batches: set[int]) -> str:
    engine, method, batch = key
    return f"{engine} · {method}" + (f" · batch {batch}" if len(batches) > 1 else "")


def sweep_speed(rows: list[dict], path: Path | None = None, bandwidth_gb_s: float | None = None):
    """Decode tokens/s against parameters per engine and method (solid), each over its bandwidth floor (dotted,
    same colour); a star marks a quantized point faster than 16-bit at the same size, engine and batch."""
    series = _series(rows)
    batches = {key[2] for key in series}
    fig, ax = plt.subplots(figsize=(8, 5))
    base = {(r["size"], r["engine"], r["batch"]): r["tok_s"] for r in _measured(rows, "decode_ms")
            if r["method"] == "baseline"}
    for key, points in series.items():
        params = [r["params"] for r in points]
        (line,) = ax.plot(params, [r["tok_s"] for r in points], marker="o", label=_label(key, batches))
        ax.plot(params, [1000 * r["batch"] / r["floor_ms"] for r in points], ls=":", color=line.get_color())
        faster = [r for r in points if r["method"] != "baseline"
                  and r["tok_s"] > base.get((r["size"], r["engine"], r["batch"]), float("inf"))]
        ax.scatter([r["params"] for r in faster], [r["tok_s"] for r in faster], marker="*", s=220,
                   color=line.get_color(), zorder=3)
    floor = f" at {bandwidth_gb_s:.0f} GB/s copy bandwidth" if bandwidth_gb_s else ""
    ax.set(xscale="log", yscale="log", xlabel="parameters (random weights beyond the default model)",
           ylabel="decode tokens/s (median)",
           title=f"Decode speed against size; dotted: bandwidth floor{floor}; ★ quantized faster than 16-bit")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def sweep_memory(rows: list[dict], path: Path | None = None):
    """Weight memory (solid) and peak memory (dashed) against parameters, per engine and method, smallest batch."""
    series = _series(rows)
    smallest = min((key[2] for key in series), default=1)
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, points in series.items():
        if key[2] != smallest:
            continue
        params = [r["params"] for r in points]
        (line,) = ax.plot(params, [r["weight_mb"] / 1000 for r in points], marker="o", label=_label(key, set()))
        peaks = [(r["params"], r["peak_mb"] / 1000) for r in points if r.get("peak_mb")]
        if peaks:
            ax.plot(*zip(*peaks, strict=True), ls="--", color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="GB",
           title="Memory against size: weights (solid), peak while decoding (dashed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)
