"""Interactive explorers for the notebooks (introduced in notebooks/02_why_quantize).

Core ipywidgets only (``interactive`` with IntSlider, Dropdown, ToggleButtons), so that the controls work with
Colab's ipywidgets 7.7 as well as with 8. Each explorer is a drawing function plus controls that redraw it.
A notebook also calls the drawing function once with the defaults, so that a page without a running kernel
(GitHub, a headless run) still shows a figure and its numbers.
"""

import ipywidgets
import matplotlib.pyplot as plt
import torch

from quantlab import linear, memory

# The advisor's compute capabilities (FP8 needs 8.9, notebooks/13); 0.0 is unknown (a Dropdown cannot hold None).
GPU_CAPABILITIES = {"unknown": 0.0, "7.5 (T4)": 7.5, "8.0 (A100)": 8.0, "8.9 (L4, RTX 40xx)": 8.9,
                    "9.0 (H100, H200)": 9.0, "10.0 (B200)": 10.0}
# Dropdown labels -> linear.quantize's group_size (a Dropdown cannot hold None as a value).
GROUPINGS = {"g32": 32, "g64": 64, "g128": 128, "per channel": None, "per tensor": "tensor"}


def quantization_error(weight: torch.Tensor, bits: int = 4, group_size: int | str | None = 128,
                       symmetric: bool = False) -> None:
    """Quantize ``weight`` with :func:`quantlab.linear.fake_quantize`; print the error and the stored bits per
    weight (scales and zero points included, :func:`quantlab.memory.int_format`); draw the weights before and
    after and a histogram of the rounding error."""
    w = weight.detach().float().cpu()
    w_hat = linear.fake_quantize(w, bits, group_size, symmetric)
    fmt = memory.int_format(bits, w.numel() if group_size == "tensor" else group_size, symmetric)
    kind = "absmax (symmetric)" if symmetric else "zero-point (asymmetric)"
    grouping = {None: "per channel", "tensor": "per tensor"}.get(group_size, f"groups of {group_size}")
    print(f"{bits}-bit {kind}, {grouping}: relative error {linear.relative_error(w, w_hat):.2%}, "
          f"{fmt.bits_per_weight(w.shape[-1]):.3f} stored bits per weight (16-bit scales included)")

    fig, (ax_w, ax_err) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax_w.hist(w.flatten(), bins=200, color="lightgray", label="original")
    ax_w.hist(w_hat.flatten(), bins=200, histtype="step", color="tab:red", label="quantized")
    ax_w.set(yscale="log", xlabel="weight value", ylabel="count", title="Weights before and after")
    ax_w.legend()
    ax_err.hist((w_hat - w).flatten(), bins=100, color="tab:blue")
    ax_err.set(yscale="log", xlabel="quantized - original", title="Rounding error")
    fig.tight_layout()
    plt.show()  # shows the figure inside the widget's output area when called from the controls


def quantization_explorer(weight: torch.Tensor, bits: int = 4, group_size: int | str | None = 128,
                          symmetric: bool = False) -> ipywidgets.interactive:
    """Controls for bits, group size and absmax/zero-point that redraw :func:`quantization_error`."""
    label_of = {size: label for label, size in GROUPINGS.items()}

    def redraw(bits, grouping, symmetric):
        quantization_error(weight, bits, GROUPINGS[grouping], symmetric)

    return ipywidgets.interactive(
        redraw,
        bits=ipywidgets.IntSlider(value=bits, min=2, max=8, description="bits"),
        grouping=ipywidgets.Dropdown(options=list(GROUPINGS), value=label_of[group_size], description="scale per"),
        symmetric=ipywidgets.ToggleButtons(options=[("zero-point", False), ("absmax", True)], value=symmetric,
                                           description="method"),
    )


def show_recommendation(situation, measured=None) -> None:
    """Print :func:`quantlab.advisor.recommend`'s choice for ``situation``: method, rule, reason, config."""
    from quantlab import advisor

    choice = advisor.recommend(situation, measured)
    print(f"{choice.method}  ({choice.rule})\n{choice.reason}\n\n{choice.config}")
    if choice.kv_cache:
        print(f"\nand a quantized KV cache, {choice.kv_cache}: the 16-bit cache ({situation.kv_cache_gb:g} GB) "
              f"does not fit beside the weights\n{advisor.CONFIGS[choice.kv_cache]}")


def decision_widget(situation, measured=None) -> ipywidgets.interactive:
    """Controls for the advisor's inputs (notebooks/10_when_to_use_what), starting from ``situation``.

    Prints the recommendation for the starting situation first, so a static page shows it too.
    """
    from dataclasses import replace

    show_recommendation(situation, measured)

    def redraw(device, memory_budget_gb, model_params_b, fine_tune, target, priority, compute_capability,
               kv_cache_gb):
        chosen = replace(situation, device=device, memory_budget_gb=memory_budget_gb, model_params_b=model_params_b,
                         fine_tune=fine_tune, target=target, priority=priority,
                         compute_capability=compute_capability or None, kv_cache_gb=kv_cache_gb)
        show_recommendation(chosen, measured)

    capabilities = dict(GPU_CAPABILITIES)
    if (situation.compute_capability or 0.0) not in capabilities.values():
        capabilities[f"{situation.compute_capability:g}"] = situation.compute_capability

    return ipywidgets.interactive(
        redraw,
        device=ipywidgets.Dropdown(options=["cuda", "cpu", "mps"], value=situation.device),
        memory_budget_gb=ipywidgets.FloatSlider(value=round(situation.memory_budget_gb, 1), min=1, max=160, step=1),
        model_params_b=ipywidgets.FloatSlider(value=situation.model_params_b, min=0.1, max=70, step=0.1),
        fine_tune=ipywidgets.Checkbox(value=situation.fine_tune),
        target=ipywidgets.ToggleButtons(options=["experiment", "serving", "edge"], value=situation.target),
        priority=ipywidgets.ToggleButtons(options=["quality", "speed", "size"], value=situation.priority),
        compute_capability=ipywidgets.Dropdown(options=list(capabilities.items()),
                                               value=situation.compute_capability or 0.0, description="GPU"),
        kv_cache_gb=ipywidgets.FloatSlider(value=situation.kv_cache_gb, min=0, max=160, step=0.5,
                                           description="KV cache GB"),
    )
