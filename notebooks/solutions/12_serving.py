"""Solutions to the exercises of notebooks/12_serving (paste into the answer cell)."""

from quantlab.memory import disk_bytes

q4_k_m_share = disk_bytes(files["Q4_K_M"]) / disk_bytes(files["F16"])  # noqa: F821  (files: the notebook's)
# one token every ITL milliseconds, for the one stream at concurrency 1
single_stream_tok_s = 1000 / cpu.set_index(["format", "concurrency"]).loc[("Q4_K_M", 1), "ITL p50 ms"]  # noqa: F821
vllm_fp8_flag = "fp8"  # vllm serve CHECKPOINT --quantization fp8
