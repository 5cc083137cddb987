"""Solutions to the exercises of notebooks/05_awq (paste into the answer cell)."""
# ruff: noqa: F821  (quantize_scaled, gptq, weight, magnitude, x_held_out, model, block, ... are defined in the notebook)

# Exercise 1: fixed alpha = 0.5, no search.
w = quantize_scaled(weight, scales_for(magnitude, 0.5), BITS, GROUP_SIZE)
error_alpha_half = gptq.relative_output_error(weight, w, x_held_out)

# Exercise 2: the full search at 3 bits; compare with gptq.rtn_quantize(weight, 3, GROUP_SIZE).
w = awq_quantize(weight, x_calibration, 3, GROUP_SIZE)
error_awq_3bit = gptq.relative_output_error(weight, w, x_held_out)

# Exercise 3: the inputs of up_proj (the post-attention RMSNorm's output), then the search.
x_up = gptq.layer_inputs(model, block.mlp.up_proj, calibration_ids)
alpha_up_proj = search_scales(block.mlp.up_proj.weight, x_up, BITS, GROUP_SIZE)[1]
