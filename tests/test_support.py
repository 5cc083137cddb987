"""The support matrix: generated from docs/runs/, and README.md's copy is current."""

import copy
import json

import pytest

from quantlab import methods, support
from quantlab.errors import QuantlabError


def test_readme_support_matrix_is_current_with_the_recorded_runs():
    readme = support.README.read_text()
    assert support.with_matrix(readme, support.matrix(support.load_runs())) == readme, \
        "README.md's support matrix is out of date: run `python -m quantlab.support`"


def test_every_method_has_a_row_and_a_dropped_in_gpu_run_adds_a_column():
    runs = support.load_runs()
    gpu = copy.deepcopy(runs[0])
    gpu["meta"]["hardware"].update(gpu="NVIDIA H200", compute_capability="9.0")
    gpu["results"] = [{"method": "fp8-w8a8", "status": "ok", "kernel": "Linear", "decode_tok_s": 50.0}]
    table = support.matrix([*runs, gpu])
    for name in methods.REGISTRY:
        assert f"| `{name}` |" in table
    assert "NVIDIA H200, CC 9.0" in table and "yes / yes / yes, `Linear`" in table


def test_recorded_cpu_run_measures_hqq_and_skips_fp8_with_the_reason():
    cpu = next(run for run in support.load_runs() if not run["meta"]["hardware"]["cuda_available"])
    rows = {r["method"]: r for r in cpu["results"]}
    assert rows["hqq-int4"]["status"] == "ok"
    for name in ("fp8-wo", "fp8-w8a8"):
        assert rows[name]["status"].startswith("skipped: needs an NVIDIA GPU of compute capability 8.9")


def test_a_file_that_is_not_a_compare_run_is_named_in_a_clear_error(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(support.load_runs()[0]))
    (tmp_path / "colab-check.json").write_text(json.dumps({"copies": {}}))
    with pytest.raises(QuantlabError, match="colab-check.json is not a `quantlab compare` results.json"):
        support.load_runs(tmp_path)
