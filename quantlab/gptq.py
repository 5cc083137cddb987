"""GPTQ from scratch (notebooks/03_gptq) and GPTQ's packed int32 format (notebooks/04_load_prequantized_gptq).

GPTQ (Frantar et al. 2022, arXiv:2210.17323) quantizes one Linear layer at a time so that its *outputs* on
calibration inputs change as little as possible: it minimizes ``||W X - Ŵ X||²`` over quantized ``Ŵ``, where
the columns of ``X`` are the layer's input activations. The loss only sees ``X`` through the Hessian
``H = 2 X Xᵀ``. :func:`gptq_quantize` follows Algorithm 1 of the paper and the authors' reference code
(IST-DASLab/gptq, ``gptq.py``): quantize the weight columns one at a time on an asymmetric min-max grid,
and after each column spread its rounding error over the columns not yet quantized, weighted by the
upper Cholesky factor of ``H⁻¹``; updates to later blocks of columns are applied once per block ("lazy
batch"). :func:`rtn_quantize` is the control: round to nearest on the same grid, no error feedback.

The second half reads what GPTQ checkpoints store: ``qweight`` holds ``32 // bits`` integer codes per int32
along the input dimension, ``qzeros`` the zero points packed the same way along the output dimension,
``scales`` one float per group and output, ``g_idx`` the group of every input column.
"""

import contextlib

import torch

from quantlab.errors import QuantlabError, check_bits, check_group_size, check_non_negative, check_positive_int


class _StopForward(Exception):
    """Raised by :func:`layer_inputs`' hook: nothing after the layer needs to run."""


@torch.no_grad()
def layer_inputs(model, layer: torch.nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """The inputs [n_tokens, in_features] (float32, CPU) that ``layer`` receives while ``model`` reads each
    row of ``token_ids`` [n_sequences, seq_len]. The forward pass stops at the layer."""
    captured = []

    def capture(module, args):
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu())
        raise _StopForward

    handle = layer.register_forward_pre_hook(capture)
    try:
        for row in token_ids:
            with contextlib.suppress(_StopForward):
                model(row[None].to(model.device))
    finally:
        handle.remove()
    return torch.cat(captured)


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """``H = 2 X Xᵀ / n`` from a layer's inputs ``[..., in_features]`` (n = number of tokens), float32.

    Dividing by ``n`` changes nothing in GPTQ (damping is relative to H's diagonal); it keeps H readable.
    """
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    return 2 * x.T @ x / x.shape[0]


def min_max_grid(weights: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric grid per row of ``weights`` [rows, cols]: ``(scale, zero)``, each [rows, 1].

    The range always includes 0 (as in the reference code), so a row of all-positive weights still
    represents 0 exactly. Integer codes are ``0 .. 2**bits - 1``; ``zero`` is the code that means 0.0.
    """
    low = weights.min(dim=1, keepdim=True).values.clamp(max=0)
    high = weights.max(dim=1, keepdim=True).values.clamp(min=0)
    flat = (low == 0) & (high == 0)
    low, high = torch.where(flat, -1.0, low), torch.where(flat, 1.0, high)
    scale = (high - low) / (2**bits - 1)
    return scale, torch.round(-low / scale)


def fake_quantize(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to the grid and map back to floats: ``scale * (clamp(round(w / scale) + zero) - zero)``."""
    codes = torch.clamp(torch.round(weights / scale) + zero, 0, 2**bits - 1)
    return scale * (codes - zero)


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int | None = 128) -> torch.Tensor:
    """Round to nearest on GPTQ's grid: one min-max grid per row and group of ``group_size`` columns
    (``None``: per row), every weight rounded on its own. Returns the dequantized float32 weight."""
    bits, group_size = check_bits(bits), check_group_size(group_size)
    w = _matrix(weight)
    step = group_size or w.shape[1]
    return torch.cat([fake_quantize(g, *min_max_grid(g, bits), bits) for g in w.split(step, dim=1)], dim=1)


def inverse_hessian_factor(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` with ``λ = damp_percent * mean(diag H)``.

    Row ``i`` of ``U`` (from column ``i`` on) holds what the OBS update needs when column ``i`` is
    quantized after all columns before it: ``U[i, i]²`` is the "[H⁻¹]_qq" of the remaining problem.
    """
    h = h.clone()
    h.diagonal().add_(damp_percent * h.diagonal().mean())
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError as err:
        raise QuantlabError(
            f"The damped Hessian is not positive definite (damp_percent={damp_percent}): {err}. Raise damp_percent "
            "(the libraries use 0.01 to 0.1), or calibrate on more tokens."
        ) from err


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as float32 [out_features, in_features], or a QuantlabError saying it is not a matrix."""
    if weight.ndim != 2:
        raise QuantlabError(f"GPTQ quantizes a Linear weight [out_features, in_features]; this one has shape "
                            f"{tuple(weight.shape)}. Pass layer.weight of a torch.nn.Linear.")
    return weight.detach().float()


def _check_gptq_arguments(w: torch.Tensor, h: torch.Tensor, damp_percent, block_size) -> None:
    in_features = w.shape[1]
    if tuple(h.shape) != (in_features, in_features):
        raise QuantlabError(
            f"The Hessian must be [in_features, in_features] = [{in_features}, {in_features}] for a weight of shape "
            f"{tuple(w.shape)}; got {tuple(h.shape)}. Compute it from this layer's inputs: "
            "hessian(layer_inputs(model, layer, token_ids))."
        )
    check_non_negative("damp_percent", damp_percent, "The libraries use 0.01.")
    check_positive_int("block_size", block_size, "The reference code uses 128.")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  damp_percent: float = 0.01, block_size: int = 128, act_order: bool = False) -> torch.Tensor:
    """GPTQ for one weight matrix [out_features, in_features] given the Hessian ``h`` [in, in] of its inputs.

    ``group_size=None`` is one grid per output row; ``act_order`` quantizes the columns with the largest
    ``diag(H)`` first (``desc_act`` in the libraries). Returns the dequantized float32 weight.
    """
    bits, group_size = check_bits(bits), check_group_size(group_size)
    w = _matrix(weight).clone()
    _check_gptq_arguments(w, h, damp_percent, block_size)
    h = h.float().clone()
    dead = h.diagonal() == 0  # inputs that are always 0: any weight is fine, use 0
    h[dead, dead] = 1
    w[:, dead] = 0
    if act_order:
        order = torch.argsort(h.diagonal(), descending=True)
        w, h = w[:, order], h[order][:, order]
    u = inverse_hessian_factor(h, damp_percent)
    q = torch.zeros_like(w)
    scale, zero = min_max_grid(w, bits)  # per row, replaced at every group start when grouping
    n_cols = w.shape[1]
    for start in range(0, n_cols, block_size):
        end = min(start + block_size, n_cols)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        for i, col in enumerate(range(start, end)):
            if group_size and col % group_size == 0:
                # the group's grid comes from the weights as they stand when its block starts (as in the reference)
                scale, zero = min_max_grid(w[:, col:col + group_size], bits)
            q[:, col] = fake_quantize(block[:, i:i + 1], scale, zero, bits)[:, 0]
            errors[:, i] = (block[:, i] - q[:, col]) / u[col, col]
            block[:, i:] -= errors[:, i:i + 1] * u[col:col + 1, col:end]  # OBS update inside the block
        w[:, end:] -= errors @ u[start:end, end:]  # lazy batch update of all later columns
    if act_order:
        q = q[:, torch.argsort(order)]
    return q


def relative_output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """``||W X - Ŵ X|| / ||W X||`` (Frobenius) over the tokens in ``inputs`` [..., in_features]."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    reference = x @ weight.detach().float().T
    return ((x @ quantized.float().T - reference).norm() / reference.norm()).item()


# --- the packed checkpoint format -------------------------------------------------------------------


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Integer codes from int32 words holding ``32 // bits`` codes each, lowest bits first, along ``dim``.

    ``dim=0`` for ``qweight`` [in * bits / 32, out] and ``dim=1`` for ``qzeros`` [groups, out * bits / 32].
    Code ``j`` of a word is ``(word >> (bits * j)) & (2**bits - 1)``. 3-bit codes straddle word
    boundaries and need another layout, not handled here.
    """
    bits = check_bits(bits, (2, 4, 8))  # 3-bit codes straddle words: another layout
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    if dim == 0:
        codes = packed[:, None, :] >> shifts[None, :, None]  # [words, codes per word, cols]
        return (codes & (2**bits - 1)).reshape(-1, packed.shape[1])
    codes = packed[:, :, None] >> shifts[None, None, :]  # [rows, words, codes per word]
    return (codes & (2**bits - 1)).reshape(packed.shape[0], -1)


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bits: int = 4, zero_offset: int = 1) -> torch.Tensor:
    """The float weight [out_features, in_features] that GPTQ tensors stand for, in ``scales``' dtype.

    ``W[o, k] = scales[g, o] * (code[k, o] - zero[g, o])`` with ``g = g_idx[k]``. Files in the original
    "gptq" (v1) format store every zero point minus 1 (``zero_offset=1``); "gptq_v2" stores it as is (0).
    """
    codes = unpack_int32(qweight, bits, dim=0)
    zeros = unpack_int32(qzeros, bits, dim=1)[:, :scales.shape[1]] + zero_offset
    group = g_idx.long()
    return (scales[group] * (codes - zeros[group]).to(scales.dtype)).T
