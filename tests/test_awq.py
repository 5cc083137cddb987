"""quantlab.awq: the from-scratch AWQ scale search on a real layer (notebooks/05_awq)."""

import pytest
import torch

from quantlab import awq, gptq

LAYER = "model.layers.5.self_attn.q_proj"


@pytest.fixture(scope="module")
def layer_data(layer_inputs):
    """The layer's weight, its inputs on 8 × 256 calibration tokens and on 1024 held-out tokens."""
    layer, x_calibration, x_held_out = layer_inputs(LAYER)
    return layer.weight.detach(), x_calibration, x_held_out


def test_awq_beats_rtn_on_held_out_inputs(layer_data):
    weight, x_calibration, x_held_out = layer_data
    scales, alpha, errors = awq.search_scales(weight, x_calibration, bits=4, group_size=64)
    assert len(errors) == 20 and alpha > 0  # α = 0 (plain RTN) is not the best
    w_awq = awq.quantize_scaled(weight, scales, 4, 64)
    w_rtn = gptq.rtn_quantize(weight, 4, 64)
    assert gptq.relative_output_error(weight, w_awq, x_held_out) < gptq.relative_output_error(weight, w_rtn, x_held_out)


def test_alpha_zero_is_rtn_and_scaling_is_exact_in_float(layer_data):
    weight, x_calibration, _ = layer_data
    magnitude = awq.input_magnitude(x_calibration)
    assert torch.equal(awq.quantize_scaled(weight, awq.scales_for(magnitude, 0.0), 4, 64),
                       gptq.rtn_quantize(weight, 4, 64))
    s = awq.scales_for(magnitude, 0.5)
    assert torch.allclose((x_calibration / s) @ (weight * s).T, x_calibration @ weight.T, atol=1e-4)
    assert (s.max() * s.min()).item() == pytest.approx(1.0, rel=1e-5)


def test_awq_builder_uses_equal_length_rows_and_a_zero_point():
    """gptqmodel 7.6 keeps only the last calibration row when rows differ in length (notebooks/05), and its
    AWQConfig defaults to a symmetric grid: the registry's awq-int4 passes token ids of one length and sym=False."""
    from quantlab import methods, models

    settings = methods.Settings(calib_samples=16, calib_seq_len=256, group_size=64)
    rows = methods.awq_calibration(models.resolve(), settings)
    assert len(rows) == 16
    assert {len(row["input_ids"]) for row in rows} == {len(row["attention_mask"]) for row in rows} == {256}
    config = methods.awq_config(settings)
    assert (config.bits, config.group_size, config.sym) == (4, 64, False)


@pytest.mark.parametrize(("capability", "kernel"), [((7, 5), "gemm_triton"), ((8, 0), "auto"), ((9, 0), "auto")])
def test_the_awq_kernel_follows_the_compute_capability(monkeypatch, capability, kernel):
    """A T4 (7.5) gets gptqmodel's Triton GEMM, whose CUDA GEMM does not build below 8.0 (notebooks/05); both
    libraries know the name, and transformers is handed it only there."""
    from gptqmodel.utils.backend import normalize_backend
    from transformers.utils.quantization_config import AwqBackend

    from quantlab import methods

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert methods.awq_kernel("cuda") == kernel and methods.awq_kernel("cpu") == "torch_awq"
    assert normalize_backend(kernel, quant_method="awq") and AwqBackend(kernel)
    assert str(normalize_backend("torch_awq", quant_method="awq").value) == "awq_torch"  # what the CPU always used
    config = methods.awq_load_config("cuda")
    assert (config.backend if config else None) == ("gemm_triton" if capability < (8, 0) else None)
