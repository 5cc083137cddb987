"""LLM.int8() from scratch (notebooks/07_bnb_int8): vector-wise absmax int8 with the outlier decomposition.

The steps are the ones bitsandbytes 0.50.2 runs for ``Linear8bitLt`` in eval mode on the CPU
(``autograd/_functions.py: MatMul8bitLt``, ``backends/default/ops.py``):

1. weight ``[out, in]``: cast to float16, one absmax per output row, ``round(w * 127 / absmax)`` to int8;
2. input ``[tokens, in]``: cast to float16; every value with ``|x| >= threshold`` is an outlier and its
   feature dimension (column) an *outlier column*. The outliers are left out of the absmax of their row
   (token), the rest of the row is quantized like the weight, and outlier columns are zeroed in the int8 copy;
3. int8 x int8 matmul accumulated in int32, rescaled by ``absmax_token * absmax_row / 127**2`` (plus the bias);
4. the outlier columns of the input, in the input's own precision, times the same columns of the
   weight (dequantized from int8, as bitsandbytes does), added on top.

``threshold=0`` switches the decomposition off: everything goes through int8.

bitsandbytes' CPU backend rescales with the constant ``6.200124e-05`` where ``1 / 127**2`` is
``6.2000124e-05`` (its CUDA kernel has ``6.200012e-05``), so its CPU outputs come out 1.8e-5 (relative)
larger than the textbook formula here; pass ``output_scale=BNB_CPU_OUTPUT_SCALE`` to reproduce them bit for bit.
"""

import torch

from quantlab.errors import QuantlabError, check_non_negative

INT8_MAX = 127
BNB_CPU_OUTPUT_SCALE = 6.200124e-05  # bitsandbytes 0.50.2, backends/default/ops.py: int8_mm_dequant


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 quantization with one scale per row: ``(int8 values, float32 absmax per row)``."""
    absmax = x.abs().amax(dim=-1).float()
    return torch.round(x * (INT8_MAX / absmax[:, None])).to(torch.int8), absmax


def dequantize_rowwise(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Float32 values back from :func:`quantize_rowwise` (multiplied by the reciprocal, as bitsandbytes does)."""
    return q * absmax[:, None] * (1 / INT8_MAX)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``[out, in]`` weight as int8 with one absmax per output row (bitsandbytes' ``CB`` and ``SCB``)."""
    return quantize_rowwise(weight.to(torch.float16))


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the feature dimensions (columns of ``[tokens, in]``) holding any ``|x| >= threshold``."""
    check_non_negative("threshold", threshold, "LLM.int8() uses 6.0; 0 switches the outlier decomposition off.")
    if threshold <= 0:
        return torch.empty(0, dtype=torch.long)
    return torch.nonzero((x.abs() >= threshold).any(dim=0)).flatten()


def quantize_activations(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[tokens, in]`` as int8 with one absmax per token, outliers left out; returns (int8, absmax, columns)."""
    x16 = x.to(torch.float16)
    columns = outlier_columns(x16, threshold)
    if threshold > 0:
        x16 = x16.masked_fill(x16.abs() >= threshold, 0)  # outliers do not set the token's scale
    q, absmax = quantize_rowwise(x16)
    q[:, columns] = 0  # these columns go through the 16-bit path instead
    return q, absmax, columns


def _check_int8_weight(x: torch.Tensor, weight_int8: torch.Tensor, weight_absmax: torch.Tensor) -> None:
    """The int8 weight [out, in] must take ``x``'s features and come with one absmax per output row."""
    if weight_int8.ndim != 2 or x.shape[-1:] != weight_int8.shape[1:] or weight_absmax.shape != weight_int8.shape[:1]:
        raise QuantlabError(
            f"int8_linear needs x [..., in], an int8 weight [out, in] and its absmax [out]; got x "
            f"{tuple(x.shape)}, weight {tuple(weight_int8.shape)}, absmax {tuple(weight_absmax.shape)}. Pass both "
            "halves of quantize_weight(layer.weight) for the layer that x feeds."
        )


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, weight_absmax: torch.Tensor, threshold: float = 6.0,
                bias: torch.Tensor | None = None, output_scale: float = 1 / INT8_MAX**2) -> torch.Tensor:
    """``x @ W.T + bias`` the LLM.int8() way, for a float32 ``x`` of shape ``[..., in]``."""
    _check_int8_weight(x, weight_int8, weight_absmax)
    x2d = x.reshape(-1, x.shape[-1])
    q, x_absmax, columns = quantize_activations(x2d, threshold)
    accumulated = q.to(torch.int32) @ weight_int8.to(torch.int32).T  # exact integer matmul
    out = accumulated * torch.outer(x_absmax, weight_absmax) * output_scale
    if bias is not None:
        out = out + bias
    if len(columns):
        weight_columns = dequantize_rowwise(weight_int8[:, columns], weight_absmax)
        out = out.addmm(x2d[:, columns], weight_columns.T)
    return out.reshape(*x.shape[:-1], -1)
