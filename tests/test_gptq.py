"""quantlab.gptq against gptqmodel: the from-scratch GPTQ on a real layer, and the hand unpacking of a GPTQ
checkpoint made by transformers' GPTQConfig (notebooks 03 and 04)."""

import copy

import pytest
import torch

import quantlab  # noqa: F401  (sets gptqmodel's CPU environment before it is imported)
from quantlab import data, gptq

LAYER = "model.layers.5.self_attn.o_proj"
# Loading with GPTQConfig(backend="torch") overrides only the backend; transformers warns that it ignores the rest.
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


@pytest.fixture(scope="module")
def layer_data(layer_inputs):
    """The layer, its inputs on 8 × 256 calibration tokens and on 1024 held-out tokens."""
    return layer_inputs(LAYER)


def gptqmodel_quantize(layer, x_calibration, bits, group_size, damp_percent, act_order, sym=False):
    from gptqmodel.quantization import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    qcfg = QuantizeConfig(bits=bits, group_size=group_size or -1, damp_percent=damp_percent, sym=sym,
                          desc_act=act_order, act_group_aware=False)
    reference = GPTQ(copy.deepcopy(layer), qcfg)
    reference.quantizer.configure(perchannel=True)
    reference.add_batch(x_calibration, None)
    return reference.quantize()[0]


@pytest.mark.parametrize("bits, group_size, act_order, sym",
                         [(4, 128, False, False), (3, None, False, False), (4, 32, True, False), (4, 64, False, True)])
def test_gptq_beats_rtn_and_matches_gptqmodel(layer_data, bits, group_size, act_order, sym):
    layer, x_calibration, x_held_out = layer_data
    weight = layer.weight.detach()
    h = gptq.hessian(x_calibration)
    ours = gptq.gptq_quantize(weight, h, bits, group_size, damp_percent=0.01, act_order=act_order, sym=sym)
    theirs = gptqmodel_quantize(layer, x_calibration, bits, group_size, 0.01, act_order, sym)
    rtn = gptq.rtn_quantize(weight, bits, group_size, sym)

    def error(w):
        return gptq.relative_output_error(weight, w, x_held_out)

    assert error(ours) < error(rtn)
    assert error(ours) == pytest.approx(error(theirs), rel=0.1)


@pytest.mark.parametrize("sym", [False, True])
def test_rtn_grid_is_gptqmodels(sym):
    """Notebook 03's grid, asymmetric and symmetric, rounds exactly as gptqmodel's Quantizer, group by group."""
    from gptqmodel.quantization import QuantizeConfig
    from gptqmodel.quantization.quantizer import Quantizer

    torch.manual_seed(0)
    w = torch.randn(64, 576)
    quantizer = Quantizer(QuantizeConfig(bits=4, group_size=64, sym=sym, offload_to_disk=False))
    quantizer.configure(perchannel=True)
    theirs = []
    for group in w.split(64, dim=1):
        quantizer.find_params(group, weight=True)
        theirs.append(quantizer.quantize(group))
    assert torch.equal(gptq.rtn_quantize(w, 4, 64, sym=sym), torch.cat(theirs, dim=1))


def test_symmetric_grid_has_its_zero_in_the_middle():
    scale, zero = gptq.min_max_grid(torch.tensor([[-1.0, 0.25, 0.5]]), bits=4, sym=True)
    assert zero.item() == 8 and scale.item() == pytest.approx(2 / 15)


def test_rtn_uses_at_most_2_to_the_bits_values_per_group():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q = gptq.rtn_quantize(w, bits=3, group_size=16)
    assert all(len(torch.unique(g)) <= 8 for row in q for g in row.split(16))
    assert (q - w).abs().max() < (w.max() - w.min()) / 7  # at most one grid step from the original


def test_unpack_int32_lowest_bits_first():
    word = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert gptq.unpack_int32(word, 4, dim=0)[:, 0].tolist() == list(range(8))
    assert gptq.unpack_int32(word, 4, dim=1)[0].tolist() == list(range(8))
    negative = torch.tensor([[-1]], dtype=torch.int32)  # 0xFFFFFFFF: the sign bit is just a code bit
    assert gptq.unpack_int32(negative, 4, dim=0)[:, 0].tolist() == [15] * 8


@pytest.fixture(scope="module")
def tiny_gptq_checkpoint(default_model, tmp_path_factory):
    """A one-block Llama with random weights, quantized by GPTQConfig (asymmetric, act-order, g32) and saved."""
    from transformers import AutoModelForCausalLM, GPTQConfig, LlamaConfig, LlamaForCausalLM

    _, tokenizer = default_model
    folder = tmp_path_factory.mktemp("gptq")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "float")
    texts = tokenizer.batch_decode(data.calibration_token_ids(tokenizer, 4, 64))
    quantization = GPTQConfig(bits=4, group_size=32, sym=False, desc_act=True, dataset=texts, tokenizer=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(folder / "float", quantization_config=quantization,
                                                 dtype=torch.float32)
    model.save_pretrained(folder / "gptq")
    return folder / "gptq"


def test_hand_unpacking_matches_gptqmodel_exactly(tiny_gptq_checkpoint):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, GPTQConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_gptq_checkpoint,
                                                 quantization_config=GPTQConfig(bits=4, backend="torch"))
    assert model.config.quantization_config.format == "gptq_v2"  # zero points stored as they are
    tensors = load_file(tiny_gptq_checkpoint / "model.safetensors")
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "qweight")}
    assert len(layers) == 7
    for name, layer in layers.items():
        ours = gptq.dequantize_gptq(*(tensors[f"{name}.{t}"] for t in ("qweight", "qzeros", "scales", "g_idx")),
                                    bits=4, zero_offset=0)
        assert torch.equal(ours, layer.dequantize_weight().T), name
    g_idx = tensors["model.layers.0.self_attn.q_proj.g_idx"]
    assert not torch.equal(g_idx, torch.arange(128) // 32)  # act-order: groups are scattered


def test_gptq_v1_zero_points_are_stored_minus_one(tiny_gptq_checkpoint):
    """gptqmodel's own v2 -> v1 conversion subtracts 1 from every packed zero point; zero_offset=1 undoes it."""
    from gptqmodel.quantization import QuantizeConfig
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module
    from transformers import AutoModelForCausalLM, GPTQConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_gptq_checkpoint,
                                                 quantization_config=GPTQConfig(bits=4, backend="torch"))
    layer = model.get_submodule("model.layers.0.mlp.down_proj")
    expected = layer.dequantize_weight().T
    v2_zeros = gptq.unpack_int32(layer.qzeros, 4, dim=1)
    convert_gptq_v2_to_v1_format_module(layer, QuantizeConfig(bits=4))
    assert torch.equal(gptq.unpack_int32(layer.qzeros, 4, dim=1), v2_zeros - 1)
    ours = gptq.dequantize_gptq(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, bits=4, zero_offset=1)
    assert torch.equal(ours, expected)
