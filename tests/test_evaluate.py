"""quantlab.evaluate against plain reference implementations, on the default model (CPU)."""

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from quantlab import data, evaluate
from quantlab.errors import QuantlabError

N_TOKENS = 560  # four windows of 128 tokens and a 48-token tail
SEQ_LEN = 128


@pytest.fixture(scope="module")
def ids(default_model):
    return data.eval_token_ids(default_model[1], N_TOKENS)


def reference_nll(model, ids, seq_len, stride):
    """Obviously correct and slow: score each token, once, in the first window where it has context."""
    scored = {}
    for begin in range(0, len(ids), stride):
        window = ids[begin:begin + seq_len]
        if stride == seq_len and len(window) < seq_len:
            break  # GPTQ protocol: the short tail is dropped
        with torch.no_grad():
            logits = model(window[None]).logits[0].float()
        for t in range(1, len(window)):
            position = begin + t
            if stride < seq_len and position in scored:
                continue
            scored[position] = -F.log_softmax(logits[t - 1], dim=-1)[window[t]].item()
        if begin + seq_len >= len(ids):
            break
    return sum(scored.values()), len(scored)


@pytest.mark.parametrize(
    ("stride", "n_scored"),
    [(SEQ_LEN, 4 * (SEQ_LEN - 1)), (SEQ_LEN // 2, N_TOKENS - 1)],
    ids=["non-overlapping", "sliding"],
)
def test_perplexity_matches_reference(default_model, ids, stride, n_scored):
    model, _ = default_model
    total, reference_n_scored = reference_nll(model, ids, SEQ_LEN, stride)
    result = evaluate.perplexity(model, ids, seq_len=SEQ_LEN, stride=stride, batch_size=3)
    assert result.n_scored == reference_n_scored == n_scored
    assert result.mean_nll == pytest.approx(total / n_scored, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(total / n_scored), rel=1e-5)
    assert 5 < result.ppl < 200  # a real model on Shakespeare
    assert ("non-overlapping" if stride == SEQ_LEN else "sliding") in result.protocol


def test_random_weights_give_perplexity_near_the_vocabulary_size(default_model, ids):
    config = default_model[0].config.to_dict() | {"num_hidden_layers": 2}
    config = default_model[0].config.__class__.from_dict(config)
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(config).eval()
    result = evaluate.perplexity(random_model, ids[:256], seq_len=SEQ_LEN)
    assert 0.5 * config.vocab_size < result.ppl < 2 * config.vocab_size


@contextmanager
def perturbed(model, scale=0.05):
    """Add seeded noise to one MLP weight and put the original back afterwards."""
    weight = model.model.layers[0].mlp.down_proj.weight
    original = weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight.add_(scale * weight.abs().mean() * torch.randn(weight.shape, generator=generator))
    try:
        yield model
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_kl_divergence(default_model, ids):
    model, _ = default_model
    baseline = evaluate.baseline_logprobs(model, ids, seq_len=SEQ_LEN, n_tokens=300)
    assert baseline.shape == (256, model.config.vocab_size) and baseline.dtype == torch.float16
    same = evaluate.kl_divergence(model, baseline, ids, seq_len=SEQ_LEN)
    assert same.n_tokens == 256
    assert abs(same.mean_kl) < 1e-5 and same.top1_agreement == 1.0
    weight = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    with perturbed(model, scale=2.0):
        other = evaluate.kl_divergence(model, baseline, ids, seq_len=SEQ_LEN)
    assert other.mean_kl > 1e-3 and other.top1_agreement < 1.0
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, weight)  # the shared model is restored


def test_measure_speed(default_model):
    model, tokenizer = default_model
    speed = evaluate.measure_speed(model, tokenizer, prompt_tokens=32, new_tokens=8, repeats=1, warmup=1)
    assert speed.prompt_tokens == 32 and speed.new_tokens == 8 and speed.device == "cpu"
    assert speed.prefill_tok_s > 0 and speed.decode_tok_s > 0
    assert speed.prefill_tok_s == pytest.approx(1000 * 32 / speed.prefill_ms)
    assert speed.decode_tok_s == pytest.approx(1000 / speed.decode_ms_per_token)


def test_noisy_timings_are_measured_again_with_more_repeats(default_model, monkeypatch):
    """A busy machine can make one generated token look slower than eight: measure again before giving up."""
    model, tokenizer = default_model
    noisy, clean = (0.01, 0.5, 0.4), (0.01, 0.1, 0.8)  # (prefill, 1 token, 8 tokens) seconds
    calls = []

    def fake_runs(model, prompt, new_tokens, generate_kwargs, runs):
        calls.append(runs)
        return [noisy if len(calls) == 1 else clean] * runs

    monkeypatch.setattr(evaluate, "_speed_runs", fake_runs)
    speed = evaluate.measure_speed(model, tokenizer, prompt_tokens=32, new_tokens=8, repeats=2, warmup=1)
    assert calls == [3, 4] and speed.repeats == 4  # the warm-up once, then twice the repeats
    assert speed.decode_ms_per_token == pytest.approx(100.0)

    monkeypatch.setattr(evaluate, "_speed_runs", lambda *args: [noisy] * args[-1])
    with pytest.raises(QuantlabError, match="too noisy.*8 repeats"):
        evaluate.measure_speed(model, tokenizer, prompt_tokens=32, new_tokens=8, repeats=2)


def test_timed_and_decode_floor():
    with evaluate.timed() as timer:
        sum(range(10**5))
    assert 0 < timer.seconds < 1
    assert evaluate.decode_floor_ms(270e6, 300e9) == pytest.approx(0.9)


def test_bad_arguments_say_what_to_do(default_model, ids):
    model, tokenizer = default_model
    with pytest.raises(QuantlabError, match="seq_len"):
        evaluate.perplexity(model, ids[:100], seq_len=SEQ_LEN)
    with pytest.raises(QuantlabError, match="stride"):
        evaluate.perplexity(model, ids, seq_len=SEQ_LEN, stride=2 * SEQ_LEN)
    with pytest.raises(QuantlabError, match="1-D"):
        evaluate.perplexity(model, torch.stack([ids, ids]), seq_len=SEQ_LEN)
    with pytest.raises(QuantlabError, match="baseline_logprobs"):
        evaluate.kl_divergence(model, torch.zeros(100, 8), ids, seq_len=SEQ_LEN)
    with pytest.raises(QuantlabError, match="new_tokens"):
        evaluate.measure_speed(model, tokenizer, new_tokens=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_decode_floors_need_a_gpu(default_model):
    model, tokenizer = default_model
    with pytest.raises(QuantlabError, match="CUDA GPU"):
        evaluate.decode_floors(model, tokenizer, weight_bytes=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU runner)")
def test_decode_floors_on_gpu():
    from quantlab import memory, models

    model, tokenizer = models.load(device="cuda", dtype=torch.float16, verbose=False)
    floors = evaluate.decode_floors(model, tokenizer, memory.weight_bytes(model))
    speed = evaluate.measure_speed(model, tokenizer, prompt_tokens=32, new_tokens=16, repeats=3)
    assert 100 < floors.bandwidth_gb_s < 20_000  # any GPU between a laptop's and a B200's
    assert floors.kernels_per_token > 30  # at least a few kernels per decoder layer
    # Both floors are floors: a decoding step cannot beat either, within timing noise.
    assert max(floors.bandwidth_ms, floors.launch_ms) < 1.2 * speed.decode_ms_per_token
