"""quantlab.ggml: byte-exact GGML block quantizers, the GGUF writer and reader, and llama.cpp itself."""

import json
import subprocess
import sys
import time

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from quantlab import ggml, gguf_blocks, models
from quantlab.errors import QuantlabError

OURS = {
    "Q8_0": (gguf_blocks.quantize_q8_0, gguf_blocks.dequantize_q8_0),
    "Q4_0": (gguf_blocks.quantize_q4_0, gguf_blocks.dequantize_q4_0),
}
PROMPT = "The capital of France is"


def assert_same_bytes_as_gguf_py(x: np.ndarray, qtype: str) -> None:
    quantize, dequantize = OURS[qtype]
    ours, theirs = quantize(x), gguf.quants.quantize(x, GGMLQuantizationType[qtype])
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), f"{np.sum(ours != theirs)} bytes differ"
    assert np.array_equal(dequantize(ours), gguf.quants.dequantize(theirs, GGMLQuantizationType[qtype]))


def awkward_blocks() -> np.ndarray:
    """Blocks that trip up a careless port: zeros, outliers, ties, a largest value that is negative."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    x[0] = 0  # d = 0: all codes must be zero, no division by zero
    x[1, 5] = 1e4  # one outlier squeezes the rest of its block
    x[2] = -np.abs(x[2])
    x[2, 7] = -50  # Q4_0's scale comes from the signed extreme, here negative
    x[3, 0], x[3, 1] = 3.0, -3.0  # equal magnitudes: the first one wins
    x[4] = 0
    x[4, 0] = 127  # Q8_0 scale exactly 1, so the next values are exact halves
    x[4, 1:9] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -126.5]
    x[5] = np.float32(1e-30)  # tiny but not zero
    x[6] = np.linspace(-8, 7, 32)  # Q4_0's grid
    x[7] = np.float16(rng.standard_normal(32))
    return x


@pytest.mark.parametrize("qtype", OURS)
@pytest.mark.parametrize("shape", [(1, 32), (7, 64), (3, 5, 96), (64, 576)])
def test_reference_quantizers_match_gguf_py_on_random_tensors(qtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x.flat[::97] *= 30  # sprinkle outliers
    assert_same_bytes_as_gguf_py(x, qtype)
    assert_same_bytes_as_gguf_py(x.astype(np.float16), qtype)


@pytest.mark.parametrize("qtype", OURS)
def test_reference_quantizers_match_gguf_py_on_awkward_blocks(qtype):
    assert_same_bytes_as_gguf_py(awkward_blocks(), qtype)


def test_q8_0_rounds_halves_away_from_zero_like_c():
    codes = gguf_blocks.quantize_q8_0(awkward_blocks()[4:5])[0, 2:11].view(np.int8)
    assert codes.tolist() == [127, 1, 2, 3, -1, -2, -3, 0, -127]


@pytest.fixture(scope="module")
def bundled():
    """The tensors of the GGUF file that ships the default model (llama.cpp's own Q8_0 and Q4_1 bytes)."""
    return {t.name: t for t in gguf.GGUFReader(models.bundled_gguf_path()).tensors}


def test_q8_0_reproduces_llama_cpp_bytes_in_the_bundled_file(bundled):
    embedding = bundled["token_embd.weight"]
    assert embedding.tensor_type == GGMLQuantizationType.Q8_0
    data = np.asarray(embedding.data)
    weights = gguf_blocks.dequantize_q8_0(data)
    assert np.array_equal(weights, gguf.quants.dequantize(data, GGMLQuantizationType.Q8_0))
    assert np.array_equal(gguf_blocks.quantize_q8_0(weights), data)


@pytest.mark.parametrize("qtype", OURS)
@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.attn_k.weight"])
def test_reference_quantizers_match_gguf_py_on_the_default_model(bundled, name, qtype):
    tensor = bundled[name]
    assert_same_bytes_as_gguf_py(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type), qtype)


@pytest.mark.parametrize("qtype", OURS)
def test_rows_that_are_not_whole_blocks_are_refused(qtype):
    with pytest.raises(QuantlabError, match="multiple of 32"):
        OURS[qtype][0](np.zeros((2, 48), np.float32))


def test_rope_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).standard_normal((3 * 64, 576)).astype(np.float32)
    permuted = ggml.permute_for_rope(w, n_head=3)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(permuted, 9, 3), w)
    assert np.array_equal(permuted[:4, 0], w[[0, 32, 1, 33], 0])  # head 0: rows a0 b0 a1 b1 ...


# --- GGUF files of the default model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint():
    return models.resolve().path


@pytest.fixture(scope="module")
def gguf_files(checkpoint, tmp_path_factory):
    """F16, Q8_0 and Q4_0 GGUF files of the default model; prints how long each conversion took."""
    folder = tmp_path_factory.mktemp("gguf")
    files = {}
    for qtype in ("F16", "Q8_0", "Q4_0"):
        start = time.perf_counter()
        files[qtype] = ggml.write_gguf(checkpoint, folder / f"smollm2-{qtype}.gguf", qtype)
        print(f"write_gguf {qtype}: {time.perf_counter() - start:.1f} s")
    return files


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0"])
def test_written_files_have_llama_cpp_layout(gguf_files, qtype):
    path = gguf_files[qtype]
    rows = {r.name: r for r in ggml.tensor_table(path)}
    assert len(rows) == 2 + 9 * 30 and "output.weight" not in rows  # tied head: token_embd serves both
    assert rows["token_embd.weight"].type_name == ("F16" if qtype == "F16" else "Q8_0")
    assert rows["token_embd.weight"].shape == (49152, 576)
    assert {rows[n].type_name for n in rows if n.endswith("norm.weight")} == {"F32"}
    assert {rows[n].type_name for n in rows if n.startswith("blk.") and "norm" not in n} == {qtype}
    assert rows["blk.0.ffn_up.weight"].bits_per_weight == {"F16": 16, "Q8_0": 8.5, "Q4_0": 4.5}[qtype]
    assert not list(path.parent.glob(".*.tmp"))


def test_file_bits_per_weight(gguf_files):
    assert 4.5 < ggml.file_bits_per_weight(gguf_files["Q4_0"]) < 5.5  # Q4_0 matrices, Q8_0 embedding


def test_written_blocks_are_our_reference_quantizers_output(gguf_files, checkpoint):
    from safetensors import safe_open

    tensors = {t.name: t for t in gguf.GGUFReader(gguf_files["Q4_0"]).tensors}
    with safe_open(f"{checkpoint}/model.safetensors", framework="np") as f:
        up = f.get_tensor("model.layers.3.mlp.up_proj.weight")
        q = f.get_tensor("model.layers.3.self_attn.q_proj.weight")
    assert np.array_equal(tensors["blk.3.ffn_up.weight"].data, gguf_blocks.quantize_q4_0(up))
    q_rope_order = ggml.permute_for_rope(q, n_head=9)
    assert np.array_equal(tensors["blk.3.attn_q.weight"].data, gguf_blocks.quantize_q4_0(q_rope_order))


def test_written_metadata(gguf_files, checkpoint):
    fields = gguf.GGUFReader(gguf_files["Q8_0"]).fields

    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.attention.head_count_kv") == 3 and value("llama.rope.dimension_count") == 64
    assert value("llama.rope.freq_base") == 100000.0
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"  # the checkpoint's tokenizer does not split digits
    assert (value("tokenizer.ggml.bos_token_id"), value("tokenizer.ggml.eos_token_id")) == (1, 2)
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert tokens[2] == "<|im_end|>" and types[2] == gguf.TokenType.CONTROL
    assert types[100] == gguf.TokenType.NORMAL
    assert len(value("tokenizer.ggml.merges")) == 48900
    with open(f"{checkpoint}/chat_template.jinja") as f:
        assert value("tokenizer.chat_template") == f.read()


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def load_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
TRICKY = ["Prices rose 12.5% in 2024 -- naïve café, 東京!\n\n  x", "<|im_start|>user\nhi<|im_end|>\n"]


@pytest.mark.slow
def test_f16_file_loads_in_transformers_with_nearly_the_same_logits(gguf_files, default_model):
    model, tokenizer = default_model
    reference = logits(model, tokenizer, TEXT)
    f16 = logits(load_gguf(gguf_files["F16"]), tokenizer, TEXT)
    assert (f16 - reference).abs().max() < 0.1


@pytest.mark.slow
def test_q8_0_file_keeps_logits_and_greedy_answers(gguf_files, default_model):
    from quantlab import generate

    model, tokenizer = default_model
    q8 = load_gguf(gguf_files["Q8_0"])
    reference, quantized = logits(model, tokenizer, TEXT), logits(q8, tokenizer, TEXT)
    assert (quantized - reference).abs().max() < 2.0
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8
    assert "Paris" in generate.generate(q8, tokenizer, PROMPT, max_new_tokens=10)


@pytest.mark.slow
def test_q4_0_file_tokenizes_identically_and_writes_english(gguf_files, default_model):
    from transformers import AutoTokenizer

    from quantlab import generate

    _, tokenizer = default_model
    path = gguf_files["Q4_0"]
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [TEXT, *TRICKY]:
        assert from_gguf(text).input_ids == tokenizer(text).input_ids
        assert from_gguf.decode(from_gguf(text).input_ids) == text
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = from_gguf.apply_chat_template(chat, tokenize=False)
    assert rendered == tokenizer.apply_chat_template(chat, tokenize=False)

    text = generate.generate(load_gguf(path), tokenizer, PROMPT, max_new_tokens=20)
    words = text.split()
    assert len(words) >= 8 and all(w.isascii() for w in words)


def test_rows_that_are_not_whole_blocks_fall_back_to_f16(checkpoint, tmp_path, capsys):
    """A toy Llama whose down projection has rows of 80 weights (not a multiple of 32)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=80, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{checkpoint}/{name}", tmp_path)
    path = ggml.write_gguf(tmp_path, tmp_path / "toy.gguf", "Q4_0")
    types = {r.name: r.type_name for r in ggml.tensor_table(path)}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q4_0"
    assert "1 matrices" in capsys.readouterr().out


def test_bad_input_names_the_fix(checkpoint, tmp_path):
    with pytest.raises(QuantlabError, match="quantize_with_llama_cpp"):
        ggml.write_gguf(checkpoint, tmp_path / "x.gguf", "Q4_K_M")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(QuantlabError, match="convert_hf_to_gguf"):
        ggml.write_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(QuantlabError, match="write_gguf"):
        ggml.tensor_table(tmp_path / "missing.gguf")
    assert not list(tmp_path.glob("*.gguf"))


# --- llama.cpp itself (optional: llama-cpp-python) ---------------------------------------------------


def test_missing_llama_cpp_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(QuantlabError, match="pip install llama-cpp-python"):
        ggml.generate_with_llama_cpp(tmp_path / "any.gguf", PROMPT)


@pytest.fixture(scope="module")
def q4_k_m(gguf_files):
    pytest.importorskip("llama_cpp")
    start = time.perf_counter()
    path = ggml.quantize_with_llama_cpp(gguf_files["F16"], gguf_files["F16"].with_name("smollm2-Q4_K_M.gguf"))
    print(f"quantize_with_llama_cpp Q4_K_M: {time.perf_counter() - start:.1f} s")
    return path


def test_llama_cpp_makes_a_k_quant_mix_with_fallbacks(q4_k_m):
    rows = {r.name: r.type_name for r in ggml.tensor_table(q4_k_m)}
    assert rows["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")  # rows of 1536 = 6 K-blocks of 256
    assert rows["blk.0.ffn_up.weight"] == "Q5_0"  # rows of 576: Q4_K falls back to Q5_0
    assert rows["token_embd.weight"] == "Q8_0"  # the tied output head: Q6_K falls back to Q8_0
    assert 5.5 < ggml.file_bits_per_weight(q4_k_m) < 7


def test_llama_cpp_tokenizes_our_file_like_transformers(q4_k_m, default_model):
    import llama_cpp

    _, tokenizer = default_model
    vocab = llama_cpp.Llama(model_path=str(q4_k_m), vocab_only=True, verbose=False)
    for text in [TEXT, *TRICKY]:
        assert vocab.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text).input_ids


def test_llama_cpp_runs_the_files_write_gguf_makes(gguf_files):
    pytest.importorskip("llama_cpp")
    assert "Paris" in ggml.generate_with_llama_cpp(gguf_files["Q8_0"], PROMPT, max_new_tokens=16).text
    words = ggml.generate_with_llama_cpp(gguf_files["Q4_0"], PROMPT, max_new_tokens=16).text.split()
    assert len(words) >= 8 and all(w.isascii() for w in words)  # Q4_0 may miss Paris on a bare prompt


@pytest.fixture(scope="module")
def toy_f16(checkpoint, tmp_path_factory):
    """An F16 GGUF of a one-layer toy Llama whose rows (64 weights) are no whole K-quant block: llama.cpp warns."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    pytest.importorskip("llama_cpp")
    folder = tmp_path_factory.mktemp("toy")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{checkpoint}/{name}", folder)
    return ggml.write_gguf(folder, folder / "toy-F16.gguf", "F16")


def _llama_cpp_log_settings():
    """llama.cpp's log callback (its address) and llama-cpp-python's logger level, as they stand."""
    import ctypes
    import logging

    import llama_cpp

    callback, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    address = ctypes.cast(callback, ctypes.c_void_p).value
    return address, user_data.value, logging.getLogger("llama-cpp-python").level


@pytest.mark.parametrize("verbose", [False, True])
def test_llama_cpp_is_quiet_unless_asked_and_restores_its_log_settings(toy_f16, verbose):
    import contextlib
    import io

    before = _llama_cpp_log_settings()
    with contextlib.redirect_stderr(io.StringIO()) as shown:  # where a notebook's stderr goes
        ggml.quantize_with_llama_cpp(toy_f16, toy_f16.with_name(f"toy-{verbose}.gguf"), "Q4_K_M", verbose=verbose)
    assert ("falling back" in shown.getvalue()) == verbose, shown.getvalue()[:500]
    assert _llama_cpp_log_settings() == before


def test_nothing_of_llama_cpp_reaches_file_descriptor_2(toy_f16):
    code = ("import os, sys; from quantlab import ggml; import llama_cpp; os.write(2, b'START'); "
            f"ggml.quantize_with_llama_cpp({str(toy_f16)!r}, {str(toy_f16.with_name('toy-fd2.gguf'))!r}, 'Q4_K_M'); "
            f"ggml.generate_with_llama_cpp({str(toy_f16)!r}, 'Hi', max_new_tokens=2)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.split("START", 1)[1] == "", done.stderr[-2000:]


def test_llama_cpp_generates_and_times_tokens(q4_k_m):
    run = ggml.generate_with_llama_cpp(q4_k_m, PROMPT, max_new_tokens=16)
    print(run)
    assert "Paris" in run.text
    assert run.n_prompt_tokens == 5 and 0 < run.n_new_tokens <= 16 and run.tokens_per_second > 0
