"""The compare job's figures (notebooks/09_memory_comparison); each returns a figure, saved when given a path."""

from pathlib import Path

import matplotlib.pyplot as plt


def _measured(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]


def ppl_vs_bits(rows: list[dict], path: Path | None = None):
    """Perplexity against stored bits per weight: the lower-left corner is the Pareto front."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in _measured(rows, "ppl"):
        ax.scatter(r["bits_per_weight"], r["ppl"], s=40)
        ax.annotate(r["method"], (r["bits_per_weight"], r["ppl"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set(xlabel="stored bits per parameter (whole model, measured)", ylabel="perplexity (lower is better)",
           title="Quality against size")
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
