"""quantlab.advisor: one test per decision rule."""

from quantlab.advisor import Situation, recommend

MEASURED = [  # a made-up results.json excerpt in which GPTQ beat AWQ
    {"method": "gptq-int4", "delta_ppl_pct": 3.0},
    {"method": "awq-int4", "delta_ppl_pct": 4.5},
    {"method": "bnb-nf4", "delta_ppl_pct": 6.0},
    {"method": "gguf-q4_0", "delta_ppl_pct": 7.0},
]


def test_rule_4_fine_tuning_is_qlora():
    assert recommend(Situation(fine_tune=True)).method == "bnb-nf4"


def test_rule_3_edge_is_gguf_q8_when_it_fits_else_q4():
    assert recommend(Situation(target="edge", model_params_b=1, memory_budget_gb=8)).method == "gguf-q8_0"
    assert recommend(Situation(target="edge", model_params_b=7, memory_budget_gb=8)).method == "gguf-q4_k_m"
    assert recommend(Situation(device="cpu", target="serving")).rule.startswith("rule 3")


def test_a_model_that_fits_in_16_bit_is_not_quantized_for_quality():
    assert recommend(Situation(model_params_b=1, memory_budget_gb=16)).method == "baseline"


def test_rule_2_serving_picks_the_measured_winner():
    serving = Situation(target="serving", model_params_b=70, memory_budget_gb=48)
    assert recommend(serving).method == "awq-int4"  # the guide's default
    assert recommend(serving, MEASURED).method == "gptq-int4"


def test_rule_5_quality_picks_the_smallest_measured_loss():
    tight = Situation(model_params_b=13, memory_budget_gb=12)
    assert recommend(tight, MEASURED).method == "gptq-int4"
    assert recommend(tight).rule.startswith("rule 5")


def test_a_failed_measurement_is_no_candidate():
    failed_gptq = [{"method": "gptq-int4", "delta_ppl_pct": float("nan")}, *MEASURED[1:]]
    serving = Situation(target="serving", model_params_b=70, memory_budget_gb=48)
    assert recommend(serving, failed_gptq).method == "awq-int4"


def test_rule_1_quick_experiment_is_bitsandbytes():
    assert recommend(Situation(priority="speed", model_params_b=7, memory_budget_gb=12)).method == "bnb-int8"
    assert recommend(Situation(priority="size", model_params_b=7, memory_budget_gb=12)).method == "bnb-nf4"


def test_every_recommendation_has_a_config_to_copy():
    for situation in (Situation(fine_tune=True), Situation(target="edge"), Situation(model_params_b=1)):
        assert "from_pretrained" in recommend(situation).config


def test_fp8_serving_on_a_gpu_that_has_fp8():
    hopper = Situation(target="serving", model_params_b=70, memory_budget_gb=141, compute_capability=9.0)
    assert recommend(hopper).method == "fp8-w8a8"
    assert recommend(Situation(target="serving", model_params_b=70, memory_budget_gb=141,
                               compute_capability=7.5)).method == "awq-int4"  # a T4-class GPU has no FP8
    assert "TorchAoConfig" in recommend(hopper).config


def test_a_kv_cache_that_does_not_fit_gets_quantized():
    assert recommend(Situation(model_params_b=1, memory_budget_gb=16)).kv_cache is None
    assert recommend(Situation(model_params_b=1, memory_budget_gb=16, kv_cache_gb=20)).kv_cache == "kv-int8"
    assert recommend(Situation(model_params_b=1, memory_budget_gb=16, kv_cache_gb=40)).kv_cache == "kv-int4"


def test_hqq_is_a_four_bit_candidate():
    measured = [*MEASURED, {"method": "hqq-int4", "delta_ppl_pct": 1.0}]
    assert recommend(Situation(model_params_b=13, memory_budget_gb=12), measured).method == "hqq-int4"
