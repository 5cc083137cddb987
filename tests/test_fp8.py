"""FP8 from scratch (notebook 13's own cells) against torch's casts and torchao's scales, bit for bit."""

import pytest
import torch

from quantlab import fp8_hqq_kv as NB  # the cells tagged save of notebooks/13

FORMATS = [NB.E4M3, NB.E5M2]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_every_bit_pattern_decodes_and_re_encodes_like_torch(fmt):
    codes = torch.arange(256, dtype=torch.uint8)
    ours = NB.decode_tensor(codes, fmt)
    theirs = codes.view(fmt.torch_dtype).float()
    assert torch.equal(ours.isnan(), theirs.isnan())
    finite = ours.isfinite()
    assert torch.equal(ours[finite], theirs[finite]) and torch.equal(ours[~finite].isinf(), theirs[~finite].isinf())
    values = ours[~ours.isnan()]  # every finite value and, for E5M2, the infinities
    assert torch.equal(NB.encode(values, fmt), NB.torch_cast(values, fmt))


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_ties_round_to_the_even_pattern_like_torch(fmt):
    values = NB.decode_tensor(torch.arange(256, dtype=torch.uint8), fmt)
    grid = values[values.isfinite() & (values >= 0)].unique().double()
    ties = ((grid[1:] + grid[:-1]) / 2).float()
    ties = torch.cat([ties, -ties])
    ours = NB.encode(ties, fmt)
    assert torch.equal(ours, NB.torch_cast(ties, fmt))
    assert (ours & 1 == 0).all()  # between two neighbours a tie goes to the even one


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_random_tensors_and_values_beyond_the_largest_match_torch(fmt):
    generator = torch.Generator().manual_seed(0)
    largest = torch.finfo(fmt.torch_dtype).max
    scales = (1e-4, 1e-2, 1.0, largest, 10 * largest)
    special = torch.tensor([largest * 1.0357, largest * 1.0714, 1e30, float("inf"), -float("inf"), float("nan")])
    x = torch.cat([torch.randn(50_000, generator=generator) * scale for scale in scales] + [special])
    assert torch.equal(NB.encode(x, fmt), NB.torch_cast(x, fmt))
    beyond = NB.decode_tensor(NB.encode(torch.tensor([10 * largest]), fmt), fmt).item()
    assert beyond == (largest if fmt.saturates else float("inf"))  # E4M3fn saturates, E5M2 overflows


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_scaled_fp8_equals_torchao(granularity):
    from torchao.quantization import PerRow, PerTensor
    from torchao.quantization.quantize_.workflows import Float8Tensor

    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    w[3, 7] = 0.5  # an outlier
    codes, scale = NB.fp8_quantize(w, NB.E4M3, granularity)
    ao = Float8Tensor.from_hp(w, float8_dtype=torch.float8_e4m3fn,
                              granularity=PerRow() if granularity == "channel" else PerTensor())
    assert torch.equal(codes, ao.qdata.view(torch.uint8)) and torch.equal(scale.flatten(), ao.scale.flatten())


def test_block_scales_cover_edge_blocks():
    w = torch.randn(200, 300, generator=torch.Generator().manual_seed(2))
    absmax = NB.fp8_absmax(w, (128, 128))
    assert absmax.shape == w.shape and absmax.unique().numel() == 2 * 3
    assert absmax[199, 299] == w[128:, 256:].abs().max()
    codes, scale = NB.fp8_quantize(w, NB.E4M3, (128, 128))
    assert (NB.fp8_dequantize(codes, scale, NB.E4M3) - w).abs().max() <= 0.07 * w.abs().max()
