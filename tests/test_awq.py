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
