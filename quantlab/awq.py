"""AWQ's scale search from scratch (notebooks/05_awq).

AWQ (Lin et al. 2023, arXiv:2306.00978) keeps round-to-nearest but first rescales each *input channel* of a
Linear layer. A few input channels carry much larger activations than the rest, and the weights that multiply
them matter most for the output. Multiplying weight column ``j`` by ``s_j > 1`` before quantizing gives it a
relatively smaller rounding error; the activation is divided by ``s_j`` instead, so that in float
``(W diag(s)) (diag(s)⁻¹ x) = W x``. The division costs nothing at inference: it is folded into the
operation that produces ``x`` (the RMSNorm weight before q/k/v or gate/up, or the previous Linear).

The scales are ``s = mean|x|^α`` per input channel, and α is found by a grid search (20 values from 0 to
0.95, as in the authors' code, mit-han-lab/llm-awq ``auto_scale.py``): the α whose quantized layer
``Q(W diag(s)) diag(s)⁻¹`` has the smallest output error on calibration inputs. α = 0 is plain RTN.
The quantizer is :func:`quantlab.gptq.rtn_quantize` (asymmetric min-max grid per group). The authors' code
also searches a clipping range for every group afterwards; that step is left out here.
"""

import torch

from quantlab import gptq
from quantlab.errors import QuantlabError

ALPHA_GRID = tuple(i / 20 for i in range(20))  # 0, 0.05, ..., 0.95


def input_magnitude(inputs: torch.Tensor) -> torch.Tensor:
    """Mean absolute activation of every input channel: ``mean |x|`` over the tokens of ``inputs`` [..., in]."""
    return inputs.reshape(-1, inputs.shape[-1]).float().abs().mean(dim=0)


def scales_for(magnitude: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = magnitude^α``, normalized so that ``max(s) * min(s) = 1`` (as in llm-awq; only ratios matter)."""
    s = magnitude.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def quantize_scaled(weight: torch.Tensor, scales: torch.Tensor, bits: int = 4, group_size: int | None = 128):
    """``Q(W diag(s)) diag(s)⁻¹``: the float weight that the scaled, quantized layer applies to the unscaled
    input (the division by ``s`` stands for the folding into the previous operation)."""
    _check_width(weight, scales, "scales")
    w = weight.detach().float()
    return gptq.rtn_quantize(w * scales, bits, group_size) / scales


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||Ŵ X - W X||`` (Frobenius), what the search minimizes; see ``gptq.relative_output_error`` for
    the relative version."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    return (x @ (quantized.float() - weight.detach().float()).T).norm().item()


def _check_width(weight: torch.Tensor, per_input: torch.Tensor, name: str) -> None:
    """``per_input`` must have one value (or column) per input channel of ``weight`` [out, in]."""
    if weight.ndim != 2 or per_input.ndim == 0 or per_input.shape[-1] != weight.shape[-1]:
        raise QuantlabError(
            f"{name} of shape {tuple(per_input.shape)} do not fit a weight of shape {tuple(weight.shape)}: AWQ needs "
            f"one value per input channel, a last axis of {weight.shape[-1]}. Use this layer's own inputs "
            "(gptq.layer_inputs(model, layer, token_ids)) and the scales search_scales finds for them."
        )


@torch.no_grad()
def search_scales(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  alphas=ALPHA_GRID) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's grid search for one layer: the best scales, their α, and the output error of every α.
    Runs in float32 where ``inputs`` are (``gptq.layer_inputs`` gives them on the CPU, whatever the model's device)."""
    _check_width(weight, inputs, "inputs")
    if not len(alphas):
        raise QuantlabError("alphas is empty: give at least one exponent to try, e.g. awq.ALPHA_GRID.")
    weight = weight.detach().float().to(inputs.device)
    magnitude = input_magnitude(inputs)
    errors = [output_error(weight, quantize_scaled(weight, scales_for(magnitude, a), bits, group_size), inputs)
              for a in alphas]
    best = min(range(len(alphas)), key=errors.__getitem__)
    return scales_for(magnitude, alphas[best]), alphas[best], errors


def awq_quantize(weight: torch.Tensor, inputs: torch.Tensor, bits: int = 4,
                 group_size: int | None = 128) -> torch.Tensor:
    """AWQ for one layer: search the scales on ``inputs`` and return ``Q(W diag(s)) diag(s)⁻¹`` (float32)."""
    weight = weight.detach().float().to(inputs.device)
    scales, _, _ = search_scales(weight, inputs, bits, group_size)
    return quantize_scaled(weight, scales, bits, group_size)
