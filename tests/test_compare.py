"""quantlab compare end to end (quick settings), the method registry and the CLI."""

import json
import subprocess
import sys

import pytest

from quantlab import cli, methods


def test_env_command_reports_every_method():
    out = subprocess.run([sys.executable, "-m", "quantlab", "env"], capture_output=True, text=True, check=True).stdout
    assert "transformers" in out and "Methods" in out
    for name in methods.REGISTRY:
        assert name in out


def test_unknown_method_is_a_clear_error(capsys):
    assert cli.main(["compare", "--methods", "nope", "--quick"]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err


# Methods that need no calibration run: quick on 2 CPU cores. GPTQ and AWQ are tested in test_gptq.py and
# test_awq.py and measured by `make run`, where a CPU takes minutes per method to calibrate.
QUICK_METHODS = ["baseline", "bnb-int8", "bnb-nf4", "bnb-fp4", "rtn-int4", "gguf-q8_0", "gguf-q4_0"]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert cli.main(["compare", "--quick", "--methods", ",".join(QUICK_METHODS), "--out", str(out)]) == 0
    return out, {r["method"]: r for r in json.loads((out / "results.json").read_text())["results"]}


def test_every_method_is_measured_or_skipped_with_a_reason(quick_results):
    out, rows = quick_results
    assert set(rows) == set(QUICK_METHODS)
    for name, row in rows.items():
        assert row["status"] == "ok" or row["status"].startswith("skipped:"), (name, row["status"])
        if row["status"] == "ok":
            assert row["ppl"] > 1 and row["weight_mb"] > 0 and row["decode_tok_s"] > 0, name
    for name in ("results.md", "ppl_vs_bits.png", "memory.png", "decode_speed.png"):
        assert (out / name).stat().st_size > 0


def test_metrics_rank_the_methods_sensibly(quick_results):
    _, rows = quick_results
    assert rows["baseline"]["kl"] == pytest.approx(0, abs=1e-4)
    assert rows["bnb-int8"]["kl"] < rows["rtn-int4"]["kl"] / 5
    assert rows["gguf-q8_0"]["kl"] < rows["gguf-q4_0"]["kl"]
    bits = {name: row["bits_per_weight"] for name, row in rows.items() if row["status"] == "ok"}
    assert bits["bnb-nf4"] < bits["bnb-int8"] < bits["baseline"]


def test_weight_memory_agrees_with_the_estimate_or_says_why(quick_results):
    _, rows = quick_results
    for name, row in rows.items():
        if row["status"] == "ok":
            close = abs(row["weight_mb"] - row["theoretical_mb"]) <= 0.05 * row["theoretical_mb"]
            assert close or row["note"], name
