"""The quantized KV cache: measured bytes against notebook 13's arithmetic, and reading text through it."""

import pytest
import torch

from quantlab import data, evaluate, kvcache
from quantlab import fp8_hqq_kv as NB  # the cells tagged save of notebooks/13
from quantlab.errors import QuantlabError


@pytest.mark.parametrize("bits", [None, 8, 4, 2])
def test_measured_cache_bytes_agree_with_the_arithmetic(default_model, bits):
    model, tokenizer = default_model
    config = model.config
    shape = dict(layers=config.num_hidden_layers, kv_heads=config.num_key_value_heads,
                 head_dim=config.hidden_size // config.num_attention_heads)
    tokens = 192
    cache = kvcache.filled(model, data.eval_token_ids(tokenizer, tokens)[None], bits)
    size = model.dtype.itemsize
    expected = (NB.kv_cache_bytes(tokens, **shape, value_bytes=size) if bits is None else
                NB.kv_cache_bytes(tokens, **shape, bits=bits, group_size=kvcache.GROUP_SIZE, meta_bytes=size))
    assert abs(kvcache.cache_bytes(cache) - expected) <= 0.05 * expected


def test_the_8b_shape_cache_outgrows_its_weights_before_32k_tokens():
    per_token = NB.kv_cache_bytes(1, layers=32, kv_heads=8, head_dim=128)
    assert per_token == 131072  # 128 KiB per token in 16 bit
    assert NB.kv_cache_bytes(32768, layers=32, kv_heads=8, head_dim=128) < 2 * 8.03e9  # batch 1: below the weights
    assert 8 * NB.kv_cache_bytes(32768, layers=32, kv_heads=8, head_dim=128) > 2 * 8.03e9  # batch 8: above


def test_reading_through_a_full_precision_cache_changes_nothing_and_a_4_bit_one_costs(default_model):
    model, tokenizer = default_model
    ids = data.eval_token_ids(tokenizer, 256)
    reference = evaluate.baseline_logprobs(model, ids, 256, 256)
    full = evaluate.kl_divergence(kvcache.CachedScoring(model, None, 64), reference, ids, 256)
    four = evaluate.kl_divergence(kvcache.CachedScoring(model, 4, 64), reference, ids, 256)
    assert full.mean_kl < 1e-4 < four.mean_kl


def test_generating_with_a_quantized_cache(default_model):
    model, tokenizer = default_model
    prompt = data.eval_token_ids(tokenizer, 16)[None]
    out = kvcache.CachedScoring(model, 8).generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                                                   do_sample=False)
    assert out.shape == (1, 20)


def test_unsupported_bits_are_a_clear_error(default_model):
    with pytest.raises(QuantlabError, match="KV-cache bits"):
        kvcache.make_cache(default_model[0], 3)
