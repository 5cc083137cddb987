"""Solutions to the exercises of notebooks/03_gptq (paste into the answer cell)."""
# ruff: noqa: F821  (gptq_quantize, weight, h_calibration, x_held_out, model, layer, ... are defined in the notebook)

# Exercise 1: GPTQConfig's default damping, ten times the paper's.
w = gptq_quantize(weight, h_calibration, BITS, GROUP_SIZE, damp_percent=0.1)
error_damp_0_1 = relative_output_error(weight, w, x_held_out)

# Exercise 2: act-order, columns with the largest inputs first.
w = gptq_quantize(weight, h_calibration, BITS, GROUP_SIZE, DAMP_PERCENT, act_order=True)
error_act_order = relative_output_error(weight, w, x_held_out)

# Exercise 3: a quarter of the calibration tokens. Fewer tokens fit the calibration set more closely and
# generalize worse: compare with errors["GPTQ (from scratch)"] and errors["RTN"].
quarter_hessian = hessian(layer_inputs(model, layer, calibration_ids[:4]))
w = gptq_quantize(weight, quarter_hessian, BITS, GROUP_SIZE, DAMP_PERCENT)
error_quarter_calibration = relative_output_error(weight, w, x_held_out)
