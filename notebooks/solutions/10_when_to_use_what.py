"""Solutions to the exercises of notebooks/10_when_to_use_what (paste into the answer cell)."""

from quantlab import advisor, memory

serving_13b = advisor.recommend(advisor.Situation(target="serving", model_params_b=13, memory_budget_gb=24),
                                rows).method  # noqa: F821  (rows is defined in the notebook)
nf4_70b_gb = advisor.weight_gb(70, memory.NF4_DOUBLE_QUANT)
