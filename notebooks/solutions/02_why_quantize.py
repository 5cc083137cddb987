"""Solutions to the exercises of notebooks/02_why_quantize (paste into the answer cell)."""

import torch

# Exercise 1: 2 (K and V) x layers x KV heads x head_dim x 2 bytes (fp16) x tokens, for one sequence.
config = model.config  # noqa: F821  (model is defined in the notebook)
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
kv_bytes_full_context = 2 * config.num_hidden_layers * kv_heads * head_dim * 2 * config.max_position_embeddings

# Exercise 2: 4-bit codes plus (16-bit scale + 4-bit zero point) shared by 32 weights: 4 + 20 / 32 = 4.625.
bits_per_weight_g32 = 4 + (16 + 4) / 32

# Exercise 3: 3 bits -> codes 0..7. The range [-0.5, 1.0] already holds 0.
#   scale = (1.0 - (-0.5)) / 7 = 0.2143;  zero = round(0.5 / 0.2143) = round(2.33) = 2
#   codes = round(x / scale) + zero = round([-2.33, 0.47, 1.17, 4.67]) + 2 = [-2, 0, 1, 5] + 2
x3 = torch.tensor([-0.5, 0.1, 0.25, 1.0])
codes_3bit = [0, 2, 3, 7]
