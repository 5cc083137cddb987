"""quantlab.shapes: real models' shapes, counted on the meta device, and random-weight models built cheaply."""

import pytest
import torch

from quantlab import shapes
from quantlab.errors import QuantlabError


@pytest.mark.parametrize(("name", "published_billions"), [
    ("qwen2.5-0.5b", 0.49), ("llama-3.2-1b", 1.24), ("llama-3.1-8b", 8.03)])
def test_parameter_counts_match_the_published_ones(name, published_billions):
    assert round(shapes.parameter_count(name) / 1e9, 2) == published_billions


def test_the_configs_are_the_real_models():
    llama_1b, llama_8b, qwen = (shapes.config(n) for n in ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-0.5b"))
    assert (llama_1b.model_type, llama_1b.tie_word_embeddings, llama_1b.rope_parameters["rope_type"]) == (
        "llama", True, "llama3")
    assert (llama_8b.num_hidden_layers, llama_8b.tie_word_embeddings, llama_8b.num_key_value_heads) == (32, False, 8)
    assert (qwen.model_type, qwen.vocab_size, qwen.num_key_value_heads) == ("qwen2", 151936, 2)
    assert [n for n in shapes.SHAPES if not shapes.get(n).random] == ["smollm2-135m"]


def test_unknown_shape_lists_the_known_ones():
    with pytest.raises(QuantlabError, match="llama-3.2-1b"):
        shapes.get("llama-70b")


def test_build_random_is_seeded_initialized_and_tied(tiny):
    a, b = shapes.build_random(tiny, seed=3), shapes.build_random(tiny, seed=3)
    weight = a.model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float16
    assert torch.equal(weight, b.model.layers[0].mlp.up_proj.weight)
    assert abs(weight.float().std().item() - 0.02) < 0.001
    assert torch.all(a.model.norm.weight == 1)
    # Llama 3's scaled RoPE frequencies, computed on the device (they are buffers, not weights)
    reference = shapes.config(tiny)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](reference, "cpu")
    assert torch.allclose(a.model.rotary_emb.inv_freq, expected)
    with torch.no_grad():
        assert torch.isfinite(a(torch.tensor([[1, 2, 3]])).logits).all()


def test_the_default_model_is_not_built_at_random():
    with pytest.raises(QuantlabError, match="real weights"):
        shapes.build_random("smollm2-135m")


def test_gguf_of_a_shape_is_written_once_and_loads_in_llama_cpp(tiny):
    pytest.importorskip("llama_cpp")
    from quantlab import ggml

    q8 = shapes.gguf_file(tiny, "Q8_0")
    assert q8 == shapes.gguf_file(tiny, "Q8_0")  # cached
    types = {row.type_name for row in ggml.tensor_table(q8) if row.name.startswith("blk.")}
    assert "Q8_0" in types
    # write_gguf writes plain RoPE: the Llama 3 scaling is left out of the converted checkpoint (speed only)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(shapes.gguf_checkpoint(tiny)).rope_parameters["rope_type"] == "default"
    llm = ggml._llama_cpp().Llama(model_path=str(q8), n_ctx=32, verbose=False)
    try:
        llm.eval([1, 2, 3])
        assert llm.n_tokens == 3
    finally:
        llm.close()


def test_bad_gguf_type_lists_the_ones_made(tiny):
    with pytest.raises(QuantlabError, match="Q4_K_M"):
        shapes.gguf_file(tiny, "Q2_K")
