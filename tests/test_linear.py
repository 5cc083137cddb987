"""quantlab.linear: absmax and zero-point quantization against a plain reference and against torch's quantizers."""

import pytest
import torch

from quantlab import linear
from quantlab.errors import QuantlabError

# torch 2.13 warns that quantize_per_tensor/per_channel are deprecated; they remain the reference here.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def reference_quantize(values: list[float], bits: int, symmetric: bool) -> tuple[list[int], list[float]]:
    """The textbook definition for one group, in plain Python: codes and dequantized values."""
    if symmetric:
        q_min, q_max = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale, zero = max(abs(v) for v in values) / q_max, 0
    else:
        q_min, q_max = 0, 2**bits - 1
        low, high = min(*values, 0.0), max(*values, 0.0)
        scale = (high - low) / q_max
        zero = round(-low / scale)
    codes = [min(max(round(v / scale) + zero, q_min), q_max) for v in values]  # round(): half to even
    return codes, [(c - zero) * scale for c in codes]


def small_weight(rows=6, cols=40, seed=0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, "tensor", 8, 16])  # 16 does not divide a row of 40: short groups
def test_matches_plain_reference(bits, group_size, symmetric):
    w = small_weight()
    q = linear.quantize(w, bits, group_size, symmetric)
    w_hat = linear.dequantize(q)
    rows = [w.flatten().tolist()] if group_size == "tensor" else w.tolist()
    step = len(rows[0]) if group_size in (None, "tensor") else group_size
    expected_codes, expected_values = [], []
    for row in rows:
        for start in range(0, len(row), step):
            codes, values = reference_quantize(row[start:start + step], bits, symmetric)
            expected_codes += codes
            expected_values += values
    assert q.codes.reshape(w.shape[0], -1)[:, : w.shape[1]].flatten().tolist() == expected_codes  # padding dropped
    assert w_hat.shape == w.shape
    torch.testing.assert_close(w_hat.flatten(), torch.tensor(expected_values), rtol=1e-5, atol=1e-7)


def test_codes_scales_and_zero_points_have_the_documented_layout():
    w = small_weight(rows=4, cols=40)
    q = linear.quantize(w, 4, group_size=16, symmetric=False)  # 40 = 16 + 16 + 8: three groups per row
    assert q.codes.shape == (12, 16) and q.codes.dtype == torch.uint8
    assert q.scale.shape == q.zero.shape == (12, 1)
    assert int(q.codes.max()) <= 15 and int(q.zero.max()) <= 15
    assert q.bits_per_weight() == pytest.approx(4 + 12 * (16 + 4) / 160)
    sym = linear.quantize(w, 4, group_size=None, symmetric=True)
    assert sym.zero is None and sym.codes.dtype == torch.int8 and int(sym.codes.abs().max()) == 7
    assert sym.bits_per_weight() == pytest.approx(4 + 16 / 40)


def test_rounding_error_is_at_most_half_a_step():
    w = small_weight(rows=8, cols=64)
    q = linear.quantize(w, 3, group_size=32, symmetric=False)
    error = (linear.dequantize(q) - w).reshape(-1, 32).abs()
    assert (error <= q.scale / 2 + 1e-7).all()


def test_ties_round_half_to_even_like_torch():
    values = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 3.5, 7.0])  # absmax scale is exactly 1 at 4 bits
    q = linear.quantize(values, 4, symmetric=True)
    assert q.codes.flatten().tolist() == [0, 2, 2, 0, -2, 4, 7]
    torch_codes = torch.quantize_per_tensor(values, 1.0, 0, torch.qint8).int_repr()
    assert q.codes.flatten().tolist() == torch_codes.tolist()


def test_all_zero_group_and_bad_arguments():
    w = torch.zeros(2, 8)
    assert torch.equal(linear.fake_quantize(w, 4, symmetric=False), w)
    with pytest.raises(QuantlabError):
        linear.quantize(w, 1)
    with pytest.raises(QuantlabError):
        linear.quantize(w, 4, group_size=0)


def test_fake_quantize_keeps_dtype_and_shape():
    w = small_weight().to(torch.bfloat16)
    w_hat = linear.fake_quantize(w, 8, group_size=8)
    assert w_hat.dtype == torch.bfloat16 and w_hat.shape == w.shape


# --- torch's own quantizers, where the definitions match -------------------------------------------------


def torch_per_tensor(w: torch.Tensor, q: linear.Quantized) -> torch.Tensor:
    symmetric = q.zero is None
    zero = 0 if symmetric else int(q.zero)
    return torch.quantize_per_tensor(w, q.scale.item(), zero, torch.qint8 if symmetric else torch.quint8)


def torch_per_channel(w: torch.Tensor, q: linear.Quantized) -> torch.Tensor:
    symmetric = q.zero is None
    zero = torch.zeros(len(q.scale), dtype=torch.long) if symmetric else q.zero.flatten().long()
    return torch.quantize_per_channel(w, q.scale.flatten(), zero, 0, torch.qint8 if symmetric else torch.quint8)


@pytest.mark.parametrize("symmetric", [True, False])
def test_8bit_per_tensor_and_per_channel_match_torch_quantize(symmetric):
    """On values away from .5 ties the definitions agree exactly, codes and dequantized values."""
    w = small_weight(rows=8, cols=64, seed=1)
    for group_size, torch_quantize in (("tensor", torch_per_tensor), (None, torch_per_channel)):
        ours = linear.quantize(w, 8, group_size, symmetric)
        theirs = torch_quantize(w, ours)
        assert ours.codes.reshape(w.shape).tolist() == theirs.int_repr().tolist()
        assert torch.equal(linear.dequantize(ours), theirs.dequantize())


def test_real_weight_matches_torch(default_model):
    """One real weight matrix: symmetric codes are identical to torch's; asymmetric ones differ only at ties."""
    model, _ = default_model
    w = model.model.layers[0].mlp.down_proj.weight.detach().float()
    sym = linear.quantize(w, 8, None, symmetric=True)
    assert torch.equal(sym.codes.reshape(w.shape), torch_per_channel(w, sym).int_repr())
    assert torch.equal(linear.dequantize(sym), torch_per_channel(w, sym).dequantize())

    asym = linear.quantize(w, 8, None, symmetric=False)
    torch_codes = torch_per_channel(w, asym).int_repr().long()
    differ = asym.codes.reshape(w.shape).long() != torch_codes
    # torch adds the zero point before rounding, in float32: only values within float32 precision of a tie differ
    distance_to_tie = ((w / asym.scale).frac().abs() - 0.5).abs()
    assert differ.sum() < 1e-4 * w.numel()
    assert (distance_to_tie[differ] < 1e-4).all()
    assert ((asym.codes.reshape(w.shape).long() - torch_codes)[differ].abs() == 1).all()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_groups_match_torch_fake_quantize(default_model, bits, symmetric):
    """Per group at any bit width: torch.fake_quantize_per_channel_affine with one "channel" per group."""
    model, _ = default_model
    w = model.model.layers[0].self_attn.q_proj.weight.detach().float()[:64]  # rows of 576: short last groups
    q = linear.quantize(w, bits, group_size=128, symmetric=symmetric)
    q_min, q_max = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    zero = torch.zeros(len(q.scale), dtype=torch.int32) if symmetric else q.zero.flatten().int()
    padded = torch.nn.functional.pad(w, (0, 64)).reshape(-1, 128)  # the same groups as linear.quantize
    theirs = torch.fake_quantize_per_channel_affine(padded, q.scale.flatten(), zero, 0, q_min, q_max)
    expected = theirs.reshape(64, -1)[:, :576]
    assert torch.equal(linear.dequantize(q), expected)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4])
def test_per_tensor_matches_torch_fake_quantize(default_model, bits, symmetric):
    model, _ = default_model
    w = model.model.layers[0].self_attn.q_proj.weight.detach().float()
    q = linear.quantize(w, bits, group_size="tensor", symmetric=symmetric)
    q_min, q_max = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    zero = 0 if symmetric else int(q.zero)
    expected = torch.fake_quantize_per_tensor_affine(w, q.scale.item(), zero, q_min, q_max)
    assert torch.equal(linear.dequantize(q), expected)


def test_error_shrinks_with_bits_and_smaller_groups(default_model):
    model, _ = default_model
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    errors = [linear.relative_error(w, linear.fake_quantize(w, bits, 128, False)) for bits in range(2, 9)]
    assert errors == sorted(errors, reverse=True)
    by_grouping = [linear.relative_error(w, linear.fake_quantize(w, 4, g, False)) for g in ("tensor", None, 128, 32)]
    assert by_grouping == sorted(by_grouping, reverse=True)
    assert linear.relative_error(w, linear.fake_quantize(w, 8, 128, False)) < 0.01
