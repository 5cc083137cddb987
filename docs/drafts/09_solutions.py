"""Solutions to the exercises of notebooks/09_memory_comparison (paste into the answer cell)."""

best_under_5_bits = min((r for r in ok if r["bits_per_weight"] < 5), key=lambda r: r["ppl"])["method"]  # noqa: F821
kv_cache_mb_4096 = per_token * 4096 / 1e6  # noqa: F821
