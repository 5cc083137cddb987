"""Solutions to the exercises of notebooks/09_memory_comparison (paste into the answer cell)."""

# ok, per_token and measured are defined in the notebook
four_bit = ("rtn-int4", "gptq-int4", "awq-int4", "bnb-nf4", "bnb-fp4", "gguf-q4_0", "gguf-q4_k_m")
best_4_bit = min((r for r in ok if r["method"] in four_bit), key=lambda r: r["delta_ppl_pct"])["method"]  # noqa: F821
kv_cache_mb_4096 = per_token * 4096 / 1e6  # noqa: F821  (bytes per token × tokens, in MB)
kv_tokens_like_gptq = measured["gptq-int4"]["weight_mb"] * 1e6 / per_token  # noqa: F821
