"""quantlab.nf4 (NF4 and double quantization from scratch) bit for bit against bitsandbytes on the CPU."""

import pytest
import torch

F = pytest.importorskip("bitsandbytes.functional")

from quantlab import nf4  # noqa: E402


def random_weights():
    generator = torch.Generator().manual_seed(0)
    return {
        "gaussian 320x96": torch.randn(320, 96, generator=generator) * 0.02,
        "odd 37x29 (last block short, odd count)": torch.randn(37, 29, generator=generator),
        "50x30 (last block short)": torch.randn(50, 30, generator=generator),
        "heavy-tailed 64x600": torch.distributions.StudentT(2.0).sample((64, 600)),
    }


@pytest.fixture(scope="module")
def weights(default_model):
    model, _ = default_model
    real = {
        "q_proj of block 0": model.model.layers[0].self_attn.q_proj.weight,
        "down_proj of block 29": model.model.layers[29].mlp.down_proj.weight,
    }
    return {**random_weights(), **{name: w.detach().clone() for name, w in real.items()}}


def test_normal_map_is_bitsandbytes_table():
    assert torch.equal(nf4.normal_map(), F.get_4bit_type("nf4", device="cpu"))
    assert nf4.normal_map()[7] == 0 and nf4.normal_map()[[0, 15]].tolist() == [-1.0, 1.0]


def test_dynamic_map_is_bitsandbytes_code():
    assert torch.equal(nf4.dynamic_map(), F.create_dynamic_map())


def bitsandbytes_dequantize(packed: torch.Tensor, state, scales: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """bitsandbytes' NF4 dequantization of ``packed`` with the block ``scales`` of its ``state``: its pure-torch
    implementation (the one its CPU backend takes for odd rows), run eagerly, and whether its C kernel
    (``F.dequantize_4bit``'s path on a CPU, even rows only) agrees. bitsandbytes 0.50.2's CPU kernel returns other
    values for some shapes (320x96, 64x32) on an AVX512-BF16 Xeon, where its own torch implementation agrees with
    ours: there the kernel is not the reference.
    """
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    with torch.compiler.set_stance("force_eager"):  # it is torch.compiled: 30 s per shape otherwise
        reference = _dequantize_4bit_compute(packed.view(torch.uint8).reshape(-1), scales, _get_4bit_code("nf4", "cpu"),
                                             64, state.shape, torch.float32)
    kernel_agrees = state.shape[-1] % 2 == 0 and torch.equal(F.dequantize_4bit(packed, state), reference)
    return reference, kernel_agrees


def test_nf4_quantization_is_bit_exact(weights):
    for name, w in weights.items():
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
        ours_packed, ours_absmax = nf4.quantize_nf4(w)
        assert torch.equal(ours_packed, packed), name
        assert torch.equal(ours_absmax, state.absmax), name
        ours = nf4.dequantize_nf4(ours_packed, ours_absmax, w.shape)
        reference, kernel_agrees = bitsandbytes_dequantize(packed, state, state.absmax)
        assert torch.equal(ours, reference), name
        if kernel_agrees:
            assert torch.equal(ours, F.dequantize_4bit(packed, state)), name


def test_double_quantization_is_bit_exact(weights):
    for name, w in weights.items():
        packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        ours_packed, ours_absmax = nf4.quantize_nf4(w)
        codes, absmax2, offset = nf4.double_quantize(ours_absmax)
        assert torch.equal(ours_packed, packed), name
        assert torch.equal(codes, state.absmax), name
        assert torch.equal(absmax2, state.state2.absmax), name
        assert torch.equal(offset, state.offset), name
        scales = nf4.double_dequantize(codes, absmax2, offset)
        ours = nf4.dequantize_nf4(ours_packed, scales, w.shape)
        bnb_scales = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        reference, kernel_agrees = bitsandbytes_dequantize(packed, state, bnb_scales)
        assert torch.equal(ours, reference), name
        if kernel_agrees:
            assert torch.equal(ours, F.dequantize_4bit(packed, state)), name


def test_nearest_code_table_picks_a_nearest_value_up_to_half_a_grid_step():
    code = nf4.dynamic_map()
    table = nf4.nearest_code_table(code)
    grid = torch.linspace(-1, 1, nf4.LUT_SIZE)
    chosen = (grid - code[table]).abs()
    best = (grid[:, None] - code[None, :]).abs().min(dim=1).values
    assert (chosen - best).max() < 1e-6


def test_packing_round_trip():
    indices = torch.randint(0, 16, (1000,), generator=torch.Generator().manual_seed(1))
    packed = nf4.pack(indices)
    assert packed.shape == (500, 1) and packed.dtype == torch.uint8
    assert torch.equal(nf4.unpack(packed, 1000), indices)


def test_scale_overhead_bits():
    assert nf4.scale_bits_per_parameter(double_quant=False) == 0.5
    assert nf4.scale_bits_per_parameter() == pytest.approx(0.127, abs=1e-3)
