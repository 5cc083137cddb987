"""The quantized KV cache: make one, count its bytes, read text through it (notebooks/13_fp8_hqq_kv_cache).

transformers' ``QuantizedCache`` (after KIVI, Liu et al. 2024) keeps the newest tokens of every layer in full
precision (up to ``residual_length``, 128) and the rest quantized; quantlab uses its ``"hqq"`` backend, the hqq
library's quantizer (``"quanto"`` would need optimum-quanto, which offers 2 and 4 bits only). A quantized cache
changes nothing in a forward pass over a whole text, so its cost only shows when tokens are read *through* it:
:class:`CachedScoring` does that for the harness's own perplexity and KL (``quantlab.evaluate``).
"""

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from quantlab.errors import QuantlabError

BACKEND = "hqq"
GROUP_SIZE = 64  # QuantizedCache's default q_group_size
BITS = (2, 4, 8)  # what the hqq backend packs into whole bytes


def make_cache(model, bits: int | None):
    """A fresh cache for ``model``: ``bits=None`` the usual full-precision ``DynamicCache``, else quantized."""
    from transformers import DynamicCache, QuantizedCache

    if bits is None:
        return DynamicCache(config=model.config)
    if bits not in BITS:
        raise QuantlabError(f"KV-cache bits must be one of {BITS} (or None for full precision), not {bits!r}.")
    return QuantizedCache(backend=BACKEND, config=model.config, nbits=bits, q_group_size=GROUP_SIZE)


@torch.inference_mode()
def filled(model, prompt_ids: torch.Tensor, bits: int | None):
    """A cache that has read ``prompt_ids`` [1, tokens] in one forward pass (a prefill)."""
    cache = make_cache(model, bits)
    model(prompt_ids.to(model.device), past_key_values=cache, use_cache=True)
    return cache


def _layer_tensors(layer) -> list[torch.Tensor]:
    tensors = [layer.keys, layer.values]
    for quantized in (getattr(layer, "_quantized_keys", None), getattr(layer, "_quantized_values", None)):
        if quantized is not None:  # the hqq backend's (packed codes, meta): scale and zero per group
            codes, meta = quantized
            tensors += [codes, meta["scale"], meta["zero"]]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def cache_bytes(cache) -> int:
    """Bytes of every tensor ``cache`` holds: full-precision keys and values, packed codes, scales and zeros."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in _layer_tensors(layer))


class CachedScoring(torch.nn.Module):
    """``model`` read through a fresh KV cache of ``bits`` (None: full precision).

    ``forward(input_ids)`` feeds each row ``chunk`` tokens at a time, every chunk attending to the cache of the
    ones before, and returns their logits, so that ``evaluate.perplexity`` and ``evaluate.kl_divergence``
    measure what the cache costs; ``generate`` decodes with such a cache.
    """

    def __init__(self, model, bits: int | None, chunk: int = 64):
        super().__init__()
        self.model, self.bits, self.chunk = model, bits, chunk

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def config(self):
        return self.model.config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, **kwargs) -> CausalLMOutputWithPast:
        rows = []
        for row in input_ids:
            cache = make_cache(self.model, self.bits)
            rows.append(torch.cat([self.model(piece[None], past_key_values=cache, use_cache=True).logits
                                   for piece in row.split(self.chunk)], dim=1))
        return CausalLMOutputWithPast(logits=torch.cat(rows))

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, past_key_values=make_cache(self.model, self.bits), **kwargs)
