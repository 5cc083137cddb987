"""quantlab sweep: argument checks before measuring, the floor fit, the timing rule, one tiny run end to end.

No test asserts a wall time: the sweep reports its speeds as ratios (notebooks/11)."""

import json

import pytest

from quantlab import cli, shapes, sweep
from quantlab.errors import QuantlabError


def test_fit_recovers_overhead_and_bandwidth_from_synthetic_points():
    overhead_ms, bandwidth_gb_s = 3.0, 120.0
    sizes = [0.27e9, 1.0e9, 2.5e9, 16e9]
    fit = sweep.fit_floor(sizes, [overhead_ms + b / (bandwidth_gb_s * 1e6) for b in sizes])
    assert fit.overhead_ms == pytest.approx(overhead_ms)
    assert fit.bandwidth_gb_s == pytest.approx(bandwidth_gb_s)
    assert fit.ms(1e9) == pytest.approx(overhead_ms + 1e9 / 120e6)


def test_fit_needs_two_sizes_and_a_positive_slope():
    assert sweep.fit_floor([1e9, 1e9], [5.0, 6.0]) is None
    assert sweep.fit_floor([1e9, 2e9], [6.0, 5.0]) is None


def test_fits_are_per_engine_method_and_batch():
    def row(engine, n_bytes, ms):
        return {"status": "ok", "engine": engine, "method": "baseline", "batch": 1, "bytes_per_step": n_bytes,
                "decode_ms": ms}

    rows = [row("eager", 1e9, 12.0), row("eager", 2e9, 14.0), row("llama.cpp", 1e9, 200.0)]
    assert list(sweep.fits(rows)) == [("eager", "baseline", 1)]
    assert sweep.fits(rows)["eager", "baseline", 1].overhead_ms == pytest.approx(10.0)


def test_timing_repeats_until_two_rounds_agree():
    times = iter([30.0, 31.0, 29.0, 10.0, 10.5, 9.5, 10.2, 10.1, 9.9])  # a slow first round (warm-up), then steady
    timing = sweep.stable_timing(lambda: (1.0, next(times)), sweep.Protocol(repeats=3, max_rounds=5))
    assert (timing.rounds, timing.stable, timing.decode_ms) == (3, True, 10.1)
    assert (timing.decode_ms_min, timing.decode_ms_max) == (9.9, 10.2)


def test_timing_stops_at_the_cap_and_says_it_was_not_stable():
    times = iter([10.0, 20.0, 40.0])
    timing = sweep.stable_timing(lambda: (1.0, next(times)), sweep.Protocol(repeats=1, max_rounds=3))
    assert (timing.rounds, timing.stable, timing.decode_ms) == (3, False, 40.0)


@pytest.mark.parametrize(("kwargs", "valid"), [
    ({"sizes": "llama-70b"}, "llama-3.1-8b"), ({"methods_csv": "awq"}, "gptq-int4"),
    ({"engines": "tensorrt"}, "llama.cpp"), ({"batch": "0"}, "positive integers"), ({"batch": "one"}, "1,8")])
def test_bad_arguments_name_the_valid_ones(kwargs, valid):
    with pytest.raises(QuantlabError, match=valid):
        sweep.plan(**kwargs, device="cpu")


def test_errors_come_before_any_measuring(monkeypatch, tmp_path, capsys):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before checking the arguments")

    monkeypatch.setattr(sweep.evaluate, "memory_bandwidth", no_measuring)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(QuantlabError, match="Cannot write results"):
        sweep.run(out_dir=blocked / "results", device="cpu")
    assert cli.main(["sweep", "--engines", "tensorrt", "--out", str(tmp_path / "out")]) == 2
    assert "Valid: eager, compiled, llama.cpp, vllm" in capsys.readouterr().err


def test_skips_say_why():
    p = sweep.plan(sizes="llama-3.2-1b", device="cpu")
    assert "batch 1 only" in sweep.skip_reason(p, "llama-3.2-1b", "baseline", "llama.cpp", 8)
    assert "CUDA only" in sweep.skip_reason(p, "llama-3.2-1b", "baseline", "compiled", 1)
    assert "CUDA GPU" in sweep.skip_reason(p, "llama-3.2-1b", "gptq-int4", "eager", 1)
    default = sweep.plan(device="cpu")
    assert "--sizes" in sweep.skip_reason(default, "llama-3.2-1b", "baseline", "eager", 1)
    assert sweep.skip_reason(default, "llama-3.2-1b", "gguf-q4_k_m", "llama.cpp", 1) is None
    assert "quantlab.serve --engine vllm" in sweep.skip_reason(p, "llama-3.2-1b", "baseline", "vllm", 1)


def test_a_tiny_sweep_end_to_end(tiny, monkeypatch, tmp_path):  # noqa: F811
    pytest.importorskip("llama_cpp")
    monkeypatch.setattr(sweep.Protocol, "for_device", classmethod(
        lambda cls, device: cls(prompt_tokens=8, new_tokens=4, repeats=2, max_rounds=2)))
    rows = sweep.run(sizes=tiny, methods_csv="baseline,gguf-q8_0", engines="eager,llama.cpp,vllm", batch="1,2",
                     out_dir=tmp_path / "out", device="cpu")
    status = {(r["method"], r["engine"], r["batch"]): r["status"] for r in rows}
    measured = [key for key, s in status.items() if s == "ok"]
    assert sorted(measured) == [("baseline", "eager", 1), ("baseline", "eager", 2), ("baseline", "llama.cpp", 1),
                                ("gguf-q8_0", "llama.cpp", 1)]
    assert status["gguf-q8_0", "llama.cpp", 2].startswith("skipped: llama-cpp-python")
    for r in rows:
        if r["status"] == "ok":
            assert r["random_weights"] and r["decode_ms"] > 0 and r["floor_ms"] > 0
            assert r["decode_ms_min"] <= r["decode_ms"] <= r["decode_ms_max"]
    q8, f16 = (next(r for r in rows if r["method"] == m and r["engine"] == "llama.cpp")
               for m in ("gguf-q8_0", "baseline"))
    assert q8["bytes_per_step"] < 0.6 * f16["bytes_per_step"]
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["results"]) == len(rows) and saved["meta"]["copy_bandwidth_gb_s"] > 0
    assert {s["method"] for s in saved["speedups"]} == {"gguf-q8_0"}
    assert shapes.RANDOM_LABEL in (out / "results.md").read_text()
    assert (out / "speed_vs_size.png").stat().st_size > 0 and (out / "memory_vs_size.png").stat().st_size > 0


@pytest.mark.parametrize("kind", ["gptq", "awq"])
def test_random_int4_checkpoints_have_their_formats_layout_and_a_tokenizer(tiny, kind):
    """GPTQ packs eight codes per int32 along the input, AWQ along the output (what vLLM's loaders expect)."""
    from safetensors import safe_open

    folder = getattr(sweep, f"random_{kind}_checkpoint")(tiny)
    quantization = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == kind and quantization["bits"] == 4
    group = quantization["group_size"]
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
        qweight, scales = (f.get_tensor(f"model.layers.0.mlp.down_proj.{n}") for n in ("qweight", "scales"))
    assert "model.layers.0.mlp.down_proj.weight" not in names and "lm_head.weight" in names
    assert tuple(qweight.shape) == ((512 // 8, 256) if kind == "gptq" else (512, 256 // 8))
    assert tuple(scales.shape) == (512 // group, 256)
    assert (folder / "tokenizer.json").is_file()
    assert "random weights" in json.loads((folder / "quantlab_shape.json").read_text())["note"]
