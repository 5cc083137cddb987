"""Solutions to the exercises of notebooks/07_bnb_int8 (paste into the answer cell)."""

# 1. 8 bits per int8 weight, plus one float32 absmax per output row, shared by its 576 weights.
bits_per_weight = 8 + 32 / 576

# 2. The grid step is absmax / 127 = 60 / 127; a value rounds to 0 when it is below half a step.
zero_below = 0.5 * 60.0 / 127

# 3. Count the layers whose input statistics list an outlier dimension.
layers_with_outliers = sum(1 for s in stats.values() if s.outlier_dims)  # noqa: F821  (stats: notebook, section 2)
