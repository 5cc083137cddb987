"""quantlab.memory: measured bytes, bits per weight and the theoretical estimator."""

import pytest
import torch

from quantlab import memory, models

SMOLLM2_PARAMETERS = 134_515_008  # 134.5M, embeddings tied to lm_head and counted once


def test_fp32_weight_bytes_match_the_parameter_count(default_model):
    model, _ = default_model
    assert memory.count_parameters(model) == SMOLLM2_PARAMETERS
    assert memory.weight_bytes(model) == pytest.approx(134.5e6 * 4, rel=0.01)
    assert memory.bits_per_parameter(model) == pytest.approx(32, rel=0.001)


def test_estimate_agrees_with_measured_fp16_footprint():
    model, _ = models.load(dtype=torch.float16, verbose=False)
    estimate = memory.estimate_model_bytes(model, memory.FLOAT_FORMATS["fp16"], keep_bytes_per_value=2)
    assert memory.weight_bytes(model) == pytest.approx(estimate, rel=0.01)


def test_4bit_shrinks_a_small_model_only_about_2x(default_model):
    model, _ = default_model
    int4 = memory.estimate_model_bytes(model, memory.int_format(4, 128))
    fp16 = memory.estimate_model_bytes(model, memory.FLOAT_FORMATS["fp16"])
    assert int4 / memory.MB == pytest.approx(111.9, rel=0.01)  # 4.16 bits x 107M Linear weights + 16-bit rest
    assert 0.35 < int4 / fp16 < 0.5  # the 16-bit embedding is 21% of the parameters


@pytest.mark.parametrize(("fmt", "in_features", "bits"), [
    (memory.int_format(4, 128), None, 4 + 20 / 128),
    (memory.int_format(8, None, symmetric=True), 576, 8 + 16 / 576),
    (memory.LLM_INT8, 576, 8 + 32 / 576),
    (memory.NF4, None, 4.5),
    (memory.NF4_DOUBLE_QUANT, None, 4 + 8 / 64 + 32 / (64 * 256)),
    (memory.gguf_format("Q8_0"), None, 8.5),
    (memory.gguf_format("Q4_0"), None, 4.5),
    (memory.gguf_format("Q4_K"), None, 4.5),
    (memory.gguf_format("Q6_K"), None, 6.5625),
])
def test_bits_per_weight_of_each_format(fmt, in_features, bits):
    assert fmt.bits_per_weight(in_features) == pytest.approx(bits)


def test_nf4_model_bytes_include_the_scales(default_model):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    nf4 = AutoModelForCausalLM.from_pretrained(models.resolve().path, quantization_config=config, dtype=torch.float32)
    assert memory.count_parameters(nf4) == SMOLLM2_PARAMETERS
    estimate = memory.estimate_model_bytes(default_model[0], memory.NF4_DOUBLE_QUANT, keep_bytes_per_value=4)
    assert memory.weight_bytes(nf4) == pytest.approx(estimate, rel=0.01)
    packed_only = sum(p.numel() * p.element_size() for p in nf4.parameters())
    assert memory.weight_bytes(nf4) > packed_only  # absmax and code tables live outside the parameters


def test_disk_bytes_of_the_cached_checkpoint():
    path = models.resolve().path
    assert memory.disk_bytes(path) == pytest.approx(134.5e6 * 4, rel=0.02)


def test_measure_peak_sees_a_temporary_allocation():
    with memory.measure_peak("cpu") as peak:
        block = torch.ones(50_000_000)  # 200 MB
        del block
    if peak.rss_peak_bytes is None:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert peak.rss_peak_bytes > 190e6
