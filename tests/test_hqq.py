"""HQQ from scratch (notebook 13's own cell) against the hqq library on a real layer of the default model."""

import pytest
import torch

from quantlab import fp8_hqq_kv as NB  # the cells tagged save of notebooks/13
from quantlab import linear, methods


def hqq_library(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight.data = w.clone()
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size, axis=1)
    return HQQLinear(layer, config, compute_dtype=torch.float32, device="cpu").dequantize().float()


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_from_scratch_hqq_reaches_the_library_error_on_a_real_layer(default_model, bits):
    model, _ = default_model
    w = model.get_submodule("model.layers.0.mlp.down_proj").weight.detach().float()
    group_size = methods.group_size_for(model.config)
    ours = linear.relative_error(w, NB.hqq_quantize(w, bits, group_size))
    theirs = linear.relative_error(w, hqq_library(w, bits, group_size))
    assert ours <= 1.05 * theirs
    rtn = linear.relative_error(w, linear.fake_quantize(w, bits, group_size, symmetric=False))
    assert ours < rtn  # the zero-point search beats min-max round-to-nearest on the same grid


def test_shrinkage_keeps_only_large_errors():
    x = torch.tensor([-1.0, -0.05, 0.0, 0.05, 1.0])
    shrunk = NB.shrink_lp(x, beta=10.0, p=0.7)
    assert shrunk[1:4].abs().max() == 0 and shrunk[0] < 0 < shrunk[4] and shrunk[4] < 1.0
