"""Solutions to the exercises of notebooks/11_when_quantization_pays (paste into the answer cell)."""

from quantlab import evaluate, memory

floor_8b_int4_ms = evaluate.decode_floor_ms(
    memory.estimate_model_bytes(inventories["llama-3.1-8b"], memory.int_format(4, 128)), 4.8e12)  # noqa: F821
largest_fp16_on_t4 = "llama-3.2-1b"  # 2.47 GB; the 8B shape's 16.06 GB do not fit
