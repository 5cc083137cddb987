"""Solutions to the exercises of notebooks/06_gguf (paste into the answer cell)."""

import gguf

from quantlab import ggml

ffn_up_q4_0_bytes = 1536 * 576 // 32 * 18  # 32 weights per block, 2 bytes of fp16 scale + 16 bytes of codes
q6_k_bits = 8 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q6_K][1] / 256  # 210 bytes per 256 weights
rows = ggml.tensor_table(files["Q4_0"])  # noqa: F821  (files is defined in the notebook)
embedding_share = next(r.n_bytes for r in rows if r.name == "token_embd.weight") / sum(r.n_bytes for r in rows)
