"""NF4 and double quantization from scratch (notebooks/08_bnb_nf4_qlora), bit-exact with bitsandbytes 0.50.2 (CPU).

* :func:`normal_map` - the 16 NormalFloat4 values: quantiles of N(0, 1), scaled to [-1, 1], with an exact zero;
* :func:`quantize_nf4` / :func:`dequantize_nf4` - blocks of 64 weights, one float32 absmax each, every
  weight stored as the 4-bit index of its nearest NF4 value, two indices per byte (first one in the high nibble);
* :func:`double_quantize` / :func:`double_dequantize` - the absmax values themselves, minus their mean,
  quantized to 8 bits in blocks of 256 with bitsandbytes' dynamic 8-bit code (:func:`dynamic_map`).

What bitsandbytes does on the CPU, and so what this module does: ``quantize_4bit``
(``backends/default/ops.py``) multiplies each weight by ``1 / absmax`` and picks the NF4 value by comparing
with the midpoints between neighbours (a value exactly on a midpoint goes down). The 8-bit
``quantize_blockwise`` of the compiled CPU library (``csrc/cpu_ops.cpp``) does not search the code for every
value: it rounds the normalized value to one of 65,536 evenly spaced points of [-1, 1] and reads that
point's nearest code value from a table (:func:`nearest_code_table`). Near a midpoint between two code
values it can therefore pick the farther one, by at most half a grid step (1.5e-5).
"""

import torch

from quantlab.errors import QuantlabError, check_positive_int

NF4_OFFSET = 0.9677083  # the outermost quantile: halfway between 1 - 1/(2*15) and 1 - 1/(2*16)


def normal_map(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values, sorted: 8 positive and 7 negative normal quantiles, plus 0, divided by the largest.

    The quantile levels are float32 (as in bitsandbytes' ``create_normal_map``), the inverse normal CDF is
    evaluated in float64, the result rounded to float32.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 values > 0
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 values < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float().sort().values
    return values / values.max()


def pack(indices: torch.Tensor) -> torch.Tensor:
    """An even number of 4-bit indices, two per byte, the first in the high nibble; shape ``[bytes, 1]``."""
    pairs = indices.to(torch.uint8).view(-1, 2)
    return (pairs[:, 0] << 4 | pairs[:, 1])[:, None]


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit indices of a packed byte tensor, as int64."""
    packed = packed.flatten().long()
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()[:n]


def _blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``[n_blocks, blocksize]``: consecutive blocks, the last one padded with zeros (which change no absmax)."""
    blocksize = check_positive_int("blocksize", blocksize, "bitsandbytes uses 64 for NF4 and 256 for the scales.")
    return torch.nn.functional.pad(flat, (0, -len(flat) % blocksize)).view(-1, blocksize)


def quantize_nf4(weight: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed uint8 [(n + 1) // 2, 1], float32 absmax per block)`` of a weight, flattened row by row."""
    code = normal_map()
    midpoints = (code[:-1] + code[1:]) / 2
    blocks = _blocks(weight.flatten().float(), blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)
    indices = torch.bucketize(scaled, midpoints)  # how many midpoints lie strictly below each value
    n = weight.numel()
    return pack(indices.flatten()[:n + n % 2]), absmax  # an odd count ends with the padding's index (of 0.0)


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size | tuple[int, ...],
                   blocksize: int = 64) -> torch.Tensor:
    """Float32 weight of ``shape``: NF4 value of each index times its block's absmax."""
    n = torch.Size(shape).numel()
    _check_count("packed", packed, (n + 1) // 2, f"bytes for {n} weights")
    blocks = _blocks(normal_map()[unpack(packed, n)], blocksize)
    _check_count("absmax", absmax, len(blocks), f"block scales for {n} weights in blocks of {blocksize}")
    values = blocks * absmax[:, None]
    return values.flatten()[:n].view(shape)


def _check_count(name: str, tensor: torch.Tensor, expected: int, what: str) -> None:
    """Dequantizing needs exactly what quantizing made: ``tensor`` must hold ``expected`` values."""
    if tensor.numel() != expected:
        raise QuantlabError(
            f"{name} holds {tensor.numel()} values where {expected} {what} are needed. Pass the shape and blocksize "
            "that the tensors were quantized with, and the tensors quantize_nf4 / double_quantize returned."
        )


# --- double quantization ---------------------------------------------------------------------------------


def dynamic_map() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (``create_dynamic_map()``): 256 sorted values in [-1, 1].

    For i = 0..6, 2**i evenly spaced fractions in (0.1, 1) at the decade 10**(i - 6), with both signs,
    plus 0 and 1: dense near zero, coarse near one, like a float with a variable-length exponent.
    """
    values = [0.0, 1.0]
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        values += (10 ** (i - 6) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


LUT_SIZE = 65536  # bitsandbytes' CPU kernel looks up the nearest code value on a grid of this many points


def nearest_code_table(code: torch.Tensor) -> torch.Tensor:
    """For each of ``LUT_SIZE`` evenly spaced points of [-1, 1], the index of the nearest ``code`` value."""
    midpoints = (code[:-1] + code[1:]) * 0.5
    steps = torch.full((LUT_SIZE,), LUT_SIZE - 1.0)
    grid = -1.0 + 2.0 * torch.arange(LUT_SIZE, dtype=torch.float32) / steps
    return torch.searchsorted(midpoints, grid)  # how many midpoints lie strictly below each grid point


def quantize_blockwise_8bit(x: torch.Tensor, code: torch.Tensor,
                            blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 code index per value, float32 absmax per block)``, as the CPU library computes them:
    each value divided by its block's absmax is rounded to the nearest grid point of
    :func:`nearest_code_table`, and that point's code index is stored."""
    blocks = _blocks(x.flatten().float(), blocksize)
    absmax = blocks.abs().amax(dim=1)
    normed = (blocks * (1.0 / absmax)[:, None]).clamp(-1, 1)
    grid_index = ((normed + 1.0) * 0.5 * (LUT_SIZE - 1) + 0.5).long()
    indices = nearest_code_table(code)[grid_index].flatten()[:x.numel()]
    return indices.to(torch.uint8).view(x.shape), absmax


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The NF4 block scales in 8 bits: ``(uint8 codes, float32 absmax per 256 scales, float32 offset)``."""
    offset = absmax.mean()
    codes, absmax2 = quantize_blockwise_8bit(absmax - offset, dynamic_map(), blocksize)
    return codes, absmax2, offset


def double_dequantize(codes: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      blocksize: int = 256) -> torch.Tensor:
    """The float32 NF4 block scales back from :func:`double_quantize`."""
    n = codes.numel()
    blocks = _blocks(dynamic_map()[codes.long()], blocksize)
    _check_count("absmax2", absmax2, len(blocks), f"scales for {n} codes in blocks of {blocksize}")
    values = blocks * absmax2[:, None]
    return values.flatten()[:n] + offset


def scale_bits_per_parameter(blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256) -> float:
    """Bits of scale overhead per weight: 32 / 64 = 0.5 plain, 8 / 64 + 32 / (64 * 256) with double quant."""
    blocksize, blocksize2 = check_positive_int("blocksize", blocksize), check_positive_int("blocksize2", blocksize2)
    if not double_quant:
        return 32 / blocksize
    return 8 / blocksize + 32 / (blocksize * blocksize2)
