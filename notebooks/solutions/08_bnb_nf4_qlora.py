"""Solutions to the exercises of notebooks/08_bnb_nf4_qlora (paste into the answer cell)."""

# 1. 4 bits of index, plus an 8-bit absmax per 128 weights and a float32 per 256 of those absmax values.
bits_blocksize_128 = 4 + nf4.scale_bits_per_parameter(blocksize=128)  # noqa: F821  (nf4: imported in the notebook)

# 2. Quantize and dequantize with both types, compare relative errors.
down_proj = linear_weights[[k for k in linear_weights if k.endswith("down_proj")][-1]]  # noqa: F821
error = {t: ((quantize_dequantize(down_proj, t)[1] - down_proj).norm() / down_proj.norm()).item()  # noqa: F821
         for t in ("nf4", "fp4")}
fp4_over_nf4 = error["fp4"] / error["nf4"]

# 3. A is r x in, B is out x r.
lora_parameters = 8 * 576 + 576 * 8
