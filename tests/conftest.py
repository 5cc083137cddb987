"""Shared test fixtures. Tests run offline, on the default model from the bundled GGUF."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def default_model():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct in float32 on the CPU, loaded once per test session.

    Tests must leave the model as they found it (restore any weight they change).
    """
    from quantlab import models

    return models.load(device="cpu", dtype=torch.float32, verbose=False)
