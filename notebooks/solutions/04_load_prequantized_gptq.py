"""Solutions to the exercises of notebooks/04_load_prequantized_gptq (paste into the answer cell)."""
# ruff: noqa: F821  (model, reference, files, bits, zero_offset, gptq, memory are defined in the notebook)
from safetensors import safe_open

# Exercise 1: 32 // bits codes per int32 word.
down_proj = reference.get_submodule("model.layers.0.mlp.down_proj")
down_proj_words = down_proj.in_features * down_proj.out_features * bits // 32

# Exercise 2: the same four tensors, another layer.
prefix = "model.layers.0.mlp.down_proj."
parts = {}
for file in files:
    with safe_open(file, "pt") as f:
        parts.update({key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)})  # noqa: SIM118
by_hand = dequantize_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], bits, zero_offset)
down_proj_max_difference = (by_hand - down_proj.dequantize_weight().T.cpu()).abs().max().item()

# Exercise 3: the embedding is stored once (tied to lm_head) at the model's float width.
embedding = model.get_input_embeddings().weight
embedding_fraction = embedding.numel() * embedding.element_size() / memory.weight_bytes(model)
