"""quantlab compare end to end (quick settings), the method registry and the CLI."""

import json
import logging
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from quantlab import cli, compare, methods
from quantlab.errors import QuantlabError


def test_env_command_reports_every_method():
    out = subprocess.run([sys.executable, "-m", "quantlab", "env"], capture_output=True, text=True, check=True).stdout
    assert "transformers" in out and "Methods" in out
    for name in methods.REGISTRY:
        assert name in out


def test_unknown_method_is_a_clear_error(capsys):
    assert cli.main(["compare", "--methods", "nope", "--quick"]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err


def test_compile_on_a_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(QuantlabError, match="Drop --compile"):
        compare.run(methods_csv="baseline", out_dir=tmp_path, quick=True, compile_decode=True, device="cpu")
    assert not any(tmp_path.iterdir())  # nothing loaded, nothing written


# Methods that need no calibration run: quick on 2 CPU cores. GPTQ and AWQ are tested in test_gptq.py and
# test_awq.py and measured by `make run`, where a CPU takes minutes per method to calibrate.
QUICK_METHODS = ["baseline", "bnb-int8", "bnb-nf4", "bnb-fp4", "rtn-int4", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"]


class _Config:  # the widths settings_for reads (SmolLM2-135M's)
    hidden_size, intermediate_size = 576, 1536


def test_cpu_calibration_is_reduced_and_shared_with_quick_runs_gpu_keeps_the_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H200, asked on a CPU
    cpu, quick = compare.settings_for("cpu", False, _Config), compare.settings_for("cpu", True, _Config)
    assert cpu == quick  # one cached GPTQ/AWQ/RTN checkpoint for make run, notebooks 05/09 and the tests
    assert (cpu.calib_samples, cpu.calib_seq_len) == (16, 256) and cpu.group_size == 64
    gpu = compare.settings_for("cuda", False, _Config)
    default = methods.Settings()
    assert (gpu.calib_samples, gpu.calib_seq_len) == (default.calib_samples, default.calib_seq_len)
    assert "reduced" in compare.calibration_note(cpu) and "reduced" not in compare.calibration_note(gpu)


def test_gptq_calibrates_llama_blocks_in_four_groups():
    groups = methods.gptq_block_groups("llama")
    assert len(groups) == 4 and ["mlp.gate_proj", "mlp.up_proj"] in groups
    assert methods.gptq_block_groups("opt") is None  # other names: optimum's default order


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """The quick run's output folder and rows; the run's temp folder is a fresh one, kept for inspection."""
    out, temp = tmp_path_factory.mktemp("compare"), tmp_path_factory.mktemp("temp")
    saved, tempfile.tempdir = tempfile.tempdir, str(temp)
    try:
        assert cli.main(["compare", "--quick", "--methods", ",".join(QUICK_METHODS), "--out", str(out)]) == 0
    finally:
        tempfile.tempdir = saved
    QUICK_RUN_TEMP.append(temp)
    return out, {r["method"]: r for r in json.loads((out / "results.json").read_text())["results"]}


QUICK_RUN_TEMP = []


def test_compare_leaves_no_temporary_files_behind(quick_results):
    from quantlab import models

    # bitsandbytes' size-measuring copies and gptqmodel's offload folders are deleted; torch's compile cache
    # (torchinductor_<user>, made when gptqmodel's CPU kernel compiles) is meant to stay for the next run
    left = [p for p in QUICK_RUN_TEMP[0].iterdir() if not p.name.startswith("torchinductor_")]
    assert left == []
    assert list(models.cache_dir().rglob(".tmp-*")) == []
    out, rows = quick_results
    assert rows["bnb-nf4"]["disk_mb"] > 0  # measured before the copy was deleted


def test_hqq_writes_what_it_prints_beside_the_checkpoints_not_in_the_temp_folder(monkeypatch, tmp_path):
    """HQQ keeps no checkpoint; its log once went to a temp folder that no one removed (a fresh `make run` left it)."""
    pytest.importorskip("hqq")
    from transformers import AutoConfig

    from quantlab import models

    src = models.resolve(None)
    settings = compare.settings_for("cpu", True, AutoConfig.from_pretrained(src.path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    built = methods.get("hqq-int4").build(src, settings)
    assert built.model is not None and list(tmp_path.iterdir()) == []
    assert methods.hqq_log(src, settings).is_file()


def test_a_killed_quantization_is_cleaned_up_by_the_next_one(tmp_path):
    stale = tmp_path / ".tmp-999999999-abandoned"  # no such process
    live = tmp_path / f".tmp-{os.getpid()}-in-progress"  # this process: perhaps another thread's
    stale.mkdir(), live.mkdir()
    methods.cached_or_quantize(tmp_path / "method-abc", lambda out: (out / "weights").write_text("w"))
    assert not stale.exists() and live.exists()


def test_rtn_is_stored_like_gptq_so_that_both_load_with_the_same_kernel(quick_results):
    from transformers import AutoConfig

    from quantlab import models

    src = models.resolve(None)
    settings = compare.settings_for("cpu", True, AutoConfig.from_pretrained(src.path))
    rtn = methods.get("rtn-int4").build(src, settings).checkpoint  # cached by the quick run
    config = json.loads((rtn / "config.json").read_text())["quantization_config"]
    assert config["checkpoint_format"] == "gptq_v2" and config["sym"] is True  # GPTQConfig's defaults


def test_every_method_is_measured_or_skipped_with_a_reason(quick_results):
    out, rows = quick_results
    assert set(rows) == set(QUICK_METHODS)
    for name, row in rows.items():
        assert row["status"] == "ok" or row["status"].startswith("skipped:"), (name, row["status"])
        if row["status"] == "ok":
            assert row["ppl"] > 1 and row["weight_mb"] > 0 and row["decode_tok_s"] > 0, name
    for name in ("results.md", "ppl_vs_bits.png", "memory.png", "decode_speed.png"):
        assert (out / name).stat().st_size > 0
    assert "Calibration: 16 x 256 tokens" in (out / "results.md").read_text()


def test_metrics_rank_the_methods_sensibly(quick_results):
    _, rows = quick_results
    assert rows["baseline"]["kl"] == pytest.approx(0, abs=1e-4)
    assert rows["bnb-int8"]["kl"] < rows["rtn-int4"]["kl"] / 5
    assert rows["gguf-q8_0"]["kl"] < rows["gguf-q4_0"]["kl"]
    if rows["gguf-q4_k_m"]["status"] == "ok":  # llama-cpp-python installed
        assert rows["gguf-q4_k_m"]["kl"] < rows["gguf-q4_0"]["kl"]  # K-quant (and 5/8-bit fallbacks) beat Q4_0
    bits = {name: row["bits_per_weight"] for name, row in rows.items() if row["status"] == "ok"}
    assert bits["bnb-nf4"] < bits["bnb-int8"] < bits["baseline"]


def test_gguf_is_float_in_memory_and_small_on_disk(quick_results):
    _, rows = quick_results
    for name in ("gguf-q8_0", "gguf-q4_0"):
        row = rows[name]
        # in memory: float32 on a CPU, float16 on a GPU; in the file: at most 8.5 bits
        assert row["stored_bits_per_weight"] < 0.6 * row["bits_per_weight"] and "dequantizes" in row["note"]
    assert rows["gguf-q4_0"]["stored_bits_per_weight"] < rows["gguf-q8_0"]["stored_bits_per_weight"]
    assert rows["bnb-nf4"]["stored_bits_per_weight"] == rows["bnb-nf4"]["bits_per_weight"]


def test_weight_memory_agrees_with_the_estimate_or_says_why(quick_results):
    _, rows = quick_results
    for name, row in rows.items():
        if row["status"] == "ok":
            close = abs(row["weight_mb"] - row["theoretical_mb"]) <= 0.05 * row["theoretical_mb"]
            assert close or row["note"], name


def test_awq_on_a_cpu_calibrates_on_its_own_smaller_set_and_a_gpu_on_the_defaults(monkeypatch):
    """gptqmodel's AWQ costs about 1.5 s per calibration token on 2 cores: on a CPU it gets 2 x 32 tokens (the
    setting notebook 05 takes from here, so both make one checkpoint), the other methods 16 x 256."""
    cpu_awq = compare.settings_for("cpu", False, _Config, "awq-int4")
    assert (cpu_awq.calib_samples, cpu_awq.calib_seq_len) == (2, 32)
    assert compare.settings_for("cpu", True, _Config, "awq-int4") == cpu_awq
    assert compare.settings_for("cpu", False, _Config, "gptq-int4") == compare.settings_for("cpu", False, _Config)
    assert "awq-int4 2 x 32" in compare.calibration_note(compare.settings_for("cpu", False, _Config))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert compare.settings_for("cuda", False, _Config, "awq-int4") == compare.settings_for("cuda", False, _Config)


def test_quantizing_keeps_library_output_in_a_log_and_the_screen_clean(tmp_path, capsys):
    old = logging.getLogger("quantlab-test-old")
    old.addHandler(on_screen := logging.StreamHandler(sys.stderr))
    made_inside = logging.getLogger("quantlab-test-new")

    def quantize(out):
        print("a table per layer")
        old.warning("a log line per layer")
        made_inside.addHandler(logging.StreamHandler(sys.stdout))  # a library imported for the first time
        (out / "weights").write_text("w")

    target = tmp_path / "method-abc"
    methods.cached_or_quantize(target, quantize)
    log = (target / methods.QUANTIZE_LOG).read_text()
    assert "a table per layer" in log and "a log line per layer" in log
    assert on_screen.stream is sys.stderr and made_inside.handlers[0].stream is sys.stdout  # screens again
    shown = capsys.readouterr()
    assert "per layer" not in shown.out + shown.err and str(target / methods.QUANTIZE_LOG) in shown.out
    assert methods.cached_or_quantize(target, quantize) >= 0  # cached: not run again
    assert capsys.readouterr().out == ""
    old.removeHandler(on_screen)
    made_inside.handlers.clear()


def test_a_failed_quantization_keeps_its_log_and_says_where(tmp_path):
    def quantize(out):
        print("what went wrong, in the library's words")
        raise RuntimeError("kernel missing")

    target = tmp_path / "method-abc"
    with pytest.raises(RuntimeError, match="kernel missing") as failure:
        methods.cached_or_quantize(target, quantize)
    log = tmp_path / "method-abc-failed.log"
    assert "in the library's words" in log.read_text() and str(log) in failure.value.__notes__[0]
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == [log.name]  # no temporary folder left


def test_scoped_logging_changes_are_undone():
    logger = logging.getLogger("quantlab-test-scoped")
    logger.setLevel(logging.INFO)
    with methods.logger_level("quantlab-test-scoped", logging.ERROR), \
            methods.dropped_messages("quantlab-test-scoped", "noise"):
        assert logger.level == logging.ERROR and len(logger.filters) == 1
        assert not logger.filters[0](logging.makeLogRecord({"msg": "some noise"}))
        assert logger.filters[0](logging.makeLogRecord({"msg": "news"}))
    assert logger.level == logging.INFO and logger.filters == []


def test_fp8_needs_a_gpu_of_compute_capability_8_9():
    for name in ("fp8-wo", "fp8-w8a8"):
        method = methods.get(name)
        assert method.min_capability == (8, 9)
        assert "compute capability 8.9" in method.unavailable_reason("cpu")


def test_new_methods_are_registered_with_the_series_int4_group_size():
    for name in ("hqq-int4", "fp8-wo", "fp8-w8a8", "kv-int8", "kv-int4"):
        assert name in methods.REGISTRY
    settings = compare.settings_for("cpu", True, _Config)
    assert methods.get("hqq-int4").weight_format(settings).group_size == settings.group_size == 64


@pytest.mark.slow
def test_hqq_and_kv_cache_measured_fp8_skipped_on_cpu(tmp_path):
    new = ["baseline", "hqq-int4", "fp8-wo", "fp8-w8a8", "kv-int4"]
    assert cli.main(["compare", "--quick", "--methods", ",".join(new), "--out", str(tmp_path)]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    assert rows["hqq-int4"]["status"] == "ok" and rows["hqq-int4"]["kernel"] == "HQQLinear"
    assert rows["kv-int4"]["status"] == "ok" and rows["kv-int4"]["kl"] > rows["baseline"]["kl"]
    for name in ("fp8-wo", "fp8-w8a8"):
        assert rows[name]["status"].startswith("skipped: needs an NVIDIA GPU of compute capability 8.9")


def test_compare_says_which_checkpoints_it_reused(tmp_path):
    old, new = tmp_path / "gptq-int4-g64-old", tmp_path / "awq-int4-g64-new"
    old.mkdir()
    started = old.stat().st_mtime + 1
    new.mkdir()
    os.utime(new, (started + 1, started + 1))
    assert compare.made_before(old, started) and not compare.made_before(new, started)
    assert not compare.made_before(None, started) and not compare.made_before(tmp_path / "missing", started)
    float_source = methods.Built(None, None, old)  # the baseline: its checkpoint is the float model, no cache
    assert compare.cache_state(float_source, started) is None
    assert compare.cache_state(methods.Built(None, 12.0, old), started) == "reused"
    assert compare.cache_state(methods.Built(None, 12.0, new), started) == "made"
    assert compare.cache_state(methods.Built(None, 3.0, None), started) is None  # HQQ, bitsandbytes: nothing kept
    rows = [{"method": "gptq-int4", "cache": "reused"}, {"method": "awq-int4", "cache": "made"},
            {"method": "bnb-nf4", "cache": None}]
    assert compare.reuse_line(rows).startswith(
        "Checkpoints reused from the cache: gptq-int4; quantized and cached in this run: awq-int4")
