"""Round-to-nearest linear quantization from scratch (notebooks/02_why_quantize).

A weight ``w`` is stored as an integer code ``q`` and comes back as ``w_hat = (q - zero) * scale``:

* **absmax** (symmetric): ``zero`` is 0 and not stored, ``scale = max|w| / (2**(bits-1) - 1)``, codes in
  ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``. The code ``-2**(bits-1)`` stays unused, so that the grid is
  symmetric around 0 (at 2 bits only -1, 0, 1 are left).
* **zero-point** (asymmetric): ``scale = (max - min) / (2**bits - 1)``, ``zero = round(-min / scale)``, codes
  in ``[0, 2**bits - 1]``. The range ``[min, max]`` is first widened to hold 0, as torch's observers and
  GPTQ do, so that 0.0 is stored exactly and ``zero`` fits in ``bits`` bits.

One scale (and zero point) is shared by a *group* of weights, the granularity:

* ``group_size=g`` - ``g`` consecutive weights of a row (input features of one output channel). When ``g``
  does not divide the row, its last group is shorter, as in GPTQ (SmolLM2's 576-wide rows hold four
  groups of 128 and one of 64). In the code, rows are padded with zeros to a multiple of ``g``: a zero
  changes no group's range, and the padding is dropped again by :func:`dequantize`.
* ``group_size=None`` - one group per row: per output channel;
* ``group_size="tensor"`` - one group for the whole tensor.

Rounding is torch's: half to even, of ``w * (1 / scale)``. The codes therefore equal those of
``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` with ``torch.qint8`` and zero point 0, and of
``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` for any bits and zero point. One
difference: torch's ``quint8`` quantizers add the zero point *before* rounding, in float32, so for a value
within float32 precision of a .5 tie their code can be one higher or lower than ours
(tests/test_linear.py shows both).

This is the round-to-nearest (RTN) baseline that GPTQ (notebook 03) and AWQ (notebook 05) improve on.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quantlab.errors import check_bits, check_group_size

SMALLEST_SCALE = 1e-12  # the scale of an all-zero group, which would otherwise divide by zero


@dataclass
class Quantized:
    """A quantized tensor: ``codes`` [n_groups, group length] with one ``scale`` (and ``zero``) per group."""

    codes: torch.Tensor  # int8 (symmetric) or uint8 (asymmetric), values in bits-bit range
    scale: torch.Tensor  # float32, [n_groups, 1]
    zero: torch.Tensor | None  # uint8 [n_groups, 1]; None when symmetric (no zero point is stored)
    shape: torch.Size  # shape of the original tensor
    bits: int

    def bits_per_weight(self, scale_bits: int = 16) -> float:
        """Stored bits per weight: the code plus each group's share of a scale and a ``bits``-bit zero point."""
        zero_bits = 0 if self.zero is None else self.bits
        return self.bits + self.scale.numel() * (scale_bits + zero_bits) / self.shape.numel()


def _grouped(w: torch.Tensor, group_size: int | str | None) -> torch.Tensor:
    """``w`` in float32 as one group per row: [n_groups, group length] (rows zero-padded, see module docstring)."""
    rows = w.detach().float().reshape(-1, w.shape[-1])
    if group_size == "tensor":
        return rows.reshape(1, -1)
    group_size = check_group_size(group_size, "None (one group per row) or 'tensor' (one for the tensor)")
    group_size = group_size or rows.shape[1]
    return F.pad(rows, (0, -rows.shape[1] % group_size)).reshape(-1, group_size)


def quantize(w: torch.Tensor, bits: int, group_size: int | str | None = None, symmetric: bool = True) -> Quantized:
    """Round ``w`` to ``bits``-bit integer codes, absmax (``symmetric``) or zero-point, one scale per group."""
    bits = check_bits(bits)
    groups = _grouped(w, group_size)
    if symmetric:
        q_min, q_max = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale = (groups.abs().amax(dim=1, keepdim=True) / q_max).clamp(min=SMALLEST_SCALE)
        zero = None
    else:
        q_min, q_max = 0, 2**bits - 1
        low = groups.amin(dim=1, keepdim=True).clamp(max=0)
        high = groups.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((high - low) / q_max).clamp(min=SMALLEST_SCALE)
        zero = torch.round(-low / scale)
    codes = torch.round(groups * (1 / scale))  # torch's kernels multiply by 1/scale too
    if zero is not None:
        codes += zero
    codes = codes.clamp(q_min, q_max).to(torch.int8 if symmetric else torch.uint8)
    return Quantized(codes, scale, None if zero is None else zero.to(torch.uint8), w.shape, bits)


def dequantize(q: Quantized) -> torch.Tensor:
    """The float32 tensor that ``q`` stands for: ``(codes - zero) * scale``, in the original shape."""
    values = q.codes.float()
    if q.zero is not None:
        values -= q.zero.float()
    values *= q.scale
    n_rows = q.shape.numel() // q.shape[-1]
    return values.reshape(n_rows, -1)[:, : q.shape[-1]].reshape(q.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | str | None = None,
                  symmetric: bool = True) -> torch.Tensor:
    """Quantize and dequantize again: ``w`` with its rounding error, in ``w``'s dtype (simulated quantization)."""
    return dequantize(quantize(w, bits, group_size, symmetric)).to(w.dtype)


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Relative Frobenius error ``||w - w_hat|| / ||w||`` (0.01 means 1 %)."""
    w = w.detach().float()
    return ((w_hat.float() - w).norm() / w.norm()).item()
