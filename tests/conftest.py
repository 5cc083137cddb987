"""Shared test fixtures. Tests run offline, on the default model from the bundled GGUF."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# gptqmodel on a 2-core machine, as notebook 03's setup cell explains: a worker count its model loader accepts,
# and Python packing instead of a C++ extension that takes a minute to compile.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from quantlab import shapes  # noqa: E402


@pytest.fixture(scope="session")
def default_model():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct in float32 on the CPU, loaded once per test session.

    Tests must leave the model as they found it (restore any weight they change).
    """
    from quantlab import models

    return models.load(device="cpu", dtype=torch.float32, verbose=False)


@pytest.fixture(scope="session")
def layer_inputs(default_model):
    """``layer_inputs(name)`` -> ``(layer, x_calibration, x_held_out)``: what one Linear of the default model
    receives on 8 × 256 calibration tokens and on 1024 held-out tokens (tests of quantlab.gptq and .awq)."""
    from quantlab import data, gptq

    model, tokenizer = default_model

    def inputs(name: str):
        layer = model.get_submodule(name)
        x_calibration = gptq.layer_inputs(model, layer, data.calibration_token_ids(tokenizer, 8, 256))
        x_held_out = gptq.layer_inputs(model, layer, data.eval_token_ids(tokenizer, 1024).view(2, 512))
        return layer, x_calibration, x_held_out

    return inputs


TINY_SHAPE = shapes.Shape("tiny-llama3", "test/tiny", "llama", dict(
    hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    intermediate_size=512, vocab_size=49152, tie_word_embeddings=False, max_position_embeddings=2048,
    rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 1024},
    bos_token_id=1, eos_token_id=2))


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A two-layer shape with Llama 3's RoPE scaling, registered for the test, its files in a fresh cache folder
    (the default model's checkpoint, which every shape's tokenizer comes from, is linked into it)."""
    from quantlab import models

    default = models.resolve()
    monkeypatch.setitem(shapes.SHAPES, TINY_SHAPE.name, TINY_SHAPE)
    monkeypatch.setattr(shapes.models, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(shapes.models, "resolve", lambda *args, **kwargs: default)
    return TINY_SHAPE.name
