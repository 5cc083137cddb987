"""quantlab.int8 (LLM.int8() from scratch) against bitsandbytes' Linear8bitLt on the CPU."""

import logging

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from quantlab import data, int8, memory  # noqa: E402

THRESHOLD = 6.0


@pytest.fixture(autouse=True, scope="module")
def _quiet_fp16_cast_message():
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    previous = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    yield
    bnb_logger.setLevel(previous)


def int8_layer(linear: torch.nn.Linear, threshold: float):
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                has_fp16_weights=False, threshold=threshold)
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu").eval()


def random_case(seed: int, bias: bool):
    """A layer and a [batch, tokens, features] input with two outlier columns, one of them a single value."""
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(96, 160, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(160, 96, generator=generator) * 0.05)
        if bias:
            linear.bias.copy_(torch.randn(160, generator=generator))
    x = torch.randn(2, 40, 96, generator=generator)
    x[..., 7] *= 15  # a systematic outlier feature
    x[1, 3, 50] = -9.0  # a single outlier value
    return linear, x


@pytest.fixture(scope="module")
def real_case(default_model):
    """The input of the default model's down_proj in block 29 (hundreds of outlier columns) on real text."""
    model, tokenizer = default_model
    linear = model.model.layers[29].mlp.down_proj
    captured = {}
    handle = linear.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0][0].detach()))
    try:
        with torch.inference_mode():
            model(data.eval_token_ids(tokenizer, 96)[None])
    finally:
        handle.remove()
    return linear, captured["x"]


def test_quantized_weight_is_bitsandbytes_weight():
    linear, _ = random_case(0, bias=False)
    layer = int8_layer(linear, THRESHOLD)
    with torch.inference_mode():
        layer(torch.zeros(1, 96))  # the first forward moves CB and SCB into layer.state
    weight_int8, absmax = int8.quantize_weight(linear.weight.detach())
    assert torch.equal(weight_int8, layer.state.CB)
    assert torch.equal(absmax, layer.state.SCB)


@pytest.mark.parametrize("threshold", [0.0, THRESHOLD])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_linear8bitlt(threshold, bias):
    linear, x = random_case(1, bias)
    with torch.inference_mode():
        theirs = int8_layer(linear, threshold)(x)
    weight_int8, absmax = int8.quantize_weight(linear.weight.detach())
    b = linear.bias.detach() if bias else None
    ours = int8.int8_linear(x, weight_int8, absmax, threshold, b)
    assert ours.shape == theirs.shape
    # bitsandbytes' CPU kernel rescales by 6.200124e-05 instead of 1/127**2: 1.8e-5 relative
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    exact = int8.int8_linear(x, weight_int8, absmax, threshold, b, output_scale=int8.BNB_CPU_OUTPUT_SCALE)
    assert torch.equal(exact, theirs)


def test_int8_linear_matches_on_real_activations(real_case):
    linear, x = real_case
    assert len(int8.outlier_columns(x, THRESHOLD)) > 10
    with torch.inference_mode():
        theirs = int8_layer(linear, THRESHOLD)(x)
    weight_int8, absmax = int8.quantize_weight(linear.weight.detach())
    ours = int8.int8_linear(x, weight_int8, absmax, THRESHOLD)
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()
    exact = int8.int8_linear(x, weight_int8, absmax, THRESHOLD, output_scale=int8.BNB_CPU_OUTPUT_SCALE)
    assert torch.equal(exact, theirs)


def test_decomposition_reduces_the_error_on_real_activations(real_case):
    linear, x = real_case
    with torch.inference_mode():
        exact = linear(x)
    weight_int8, absmax = int8.quantize_weight(linear.weight.detach())
    errors = {t: (int8.int8_linear(x, weight_int8, absmax, t) - exact).norm() / exact.norm() for t in (0.0, THRESHOLD)}
    assert errors[THRESHOLD] < errors[0.0] / 3


def test_outliers_leave_the_int8_copy_and_its_scale():
    x = torch.tensor([[0.5, 8.0, -1.0], [0.25, -0.5, 2.0]])
    q, absmax, columns = int8.quantize_activations(x, THRESHOLD)
    assert columns.tolist() == [1]
    assert q[:, 1].tolist() == [0, 0]
    assert absmax.tolist() == [1.0, 2.0]  # the 8.0 does not set its token's scale


def test_weight_bytes_count_the_scales_before_and_after_a_forward():
    linear, x = random_case(2, bias=False)
    model = torch.nn.Sequential(int8_layer(linear, THRESHOLD))
    expected = 160 * 96 + 4 * 160  # int8 weights and one float32 absmax per output row
    assert memory.weight_bytes(model) == expected
    with torch.inference_mode():
        model(x)
    assert memory.weight_bytes(model) == expected
