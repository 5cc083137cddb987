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
