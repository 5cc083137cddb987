"""Measure quality and speed the same way for every method (introduced in notebooks/02_why_quantize and
notebooks/03_gptq, used by every later notebook and by ``quantlab compare``).

Quality:

* :func:`perplexity` - exp of the mean negative log-likelihood of the eval text. The default protocol is
  the GPTQ paper's: cut the token stream into non-overlapping windows of ``seq_len`` tokens, score each
  window on its own, score every token of a window but its first (it has no context), drop the leftover
  tail shorter than a window, insert no BOS token. With ``stride < seq_len`` it is the Hugging Face docs'
  sliding window instead: windows start every ``stride`` tokens and each token is scored exactly once,
  in the first window that holds it with context, the tokens before it serving as context only.
  Numbers from the two protocols are not comparable: the sliding window gives more context on average.
* :func:`kl_divergence` - how far a model's next-token distributions are from the unquantized model's
  (:func:`baseline_logprobs`), and how often both pick the same top token. More sensitive than
  perplexity to small changes, and it needs no reference text to be "right".

Speed: :func:`measure_speed` (prefill and decode throughput), :func:`timed` (wall time of any block),
and :func:`decode_floors`: what one decoded token can cost at least on a GPU, from two measured floors,
reading every weight once at the measured memory bandwidth, and launching the kernels that one decoding
step runs (counted with the profiler) at the measured cost of an empty launch. At batch 1 a small model
sits near the second floor, far above the first: launch overhead, not bandwidth, sets its speed.
"""

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quantlab import data
from quantlab.errors import QuantlabError


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` go through the model together; tokens ``[first_scored, end)`` are scored."""

    begin: int
    end: int
    first_scored: int


def _windows(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    if stride == seq_len:  # GPTQ: non-overlapping windows, tail dropped
        return [Window(b, b + seq_len, b + 1) for b in range(0, n_tokens - seq_len + 1, seq_len)]
    windows, scored_until = [], 1  # Hugging Face sliding window: each token scored once
    for begin in range(0, n_tokens, stride):
        end = min(begin + seq_len, n_tokens)
        windows.append(Window(begin, end, scored_until))
        scored_until = end
        if end == n_tokens:
            break
    return windows


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of equal length, at most ``batch_size`` at a time."""
    batch: list[Window] = []
    for window in windows:
        if batch and (len(batch) == batch_size or window.end - window.begin != batch[0].end - batch[0].begin):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


def _flat_ids(input_ids: torch.Tensor) -> torch.Tensor:
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1:
        shape = tuple(input_ids.shape)
        raise QuantlabError(f"Pass one 1-D stream of token ids (data.eval_token_ids), not shape {shape}.")
    return input_ids


def _check_lengths(n_tokens: int, seq_len: int) -> None:
    if not 2 <= seq_len <= n_tokens:
        raise QuantlabError(
            f"seq_len must be between 2 and the number of tokens ({n_tokens}), not {seq_len}: pass more "
            "tokens or a shorter seq_len."
        )


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    """float32 logits of a [batch, len] block of token ids (moved to the model's device)."""
    return model(ids.to(model.device)).logits.float()


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    mean_nll: float  # nats per scored token
    n_scored: int
    protocol: str

    def __str__(self):
        return f"perplexity {self.ppl:.3f} ({self.n_scored} tokens scored; {self.protocol})"


@torch.inference_mode()
def perplexity(model, input_ids: torch.Tensor, seq_len: int = 512, stride: int | None = None,
               batch_size: int = 1) -> PerplexityResult:
    """Perplexity of ``model`` on a 1-D stream of token ids (see the module docstring for the protocols).

    ``stride=None`` (or ``seq_len``) is the GPTQ protocol; a smaller ``stride`` the sliding window.
    ``batch_size`` windows go through the model at once; it changes speed and memory, not the result.
    """
    ids = _flat_ids(input_ids)
    stride = stride or seq_len
    _check_lengths(len(ids), seq_len)
    if not 1 <= stride <= seq_len:
        raise QuantlabError(f"stride must be between 1 and seq_len ({seq_len}), not {stride}.")
    total_nll, n_scored = 0.0, 0
    for batch in _batches(_windows(len(ids), seq_len, stride), batch_size):
        block = torch.stack([ids[w.begin:w.end] for w in batch])
        logprobs = F.log_softmax(_logits(model, block), dim=-1)[:, :-1]  # position t predicts token t + 1
        token_logprobs = logprobs.gather(-1, block[:, 1:, None].to(logprobs.device))[..., 0]
        for row, w in zip(token_logprobs, batch, strict=True):
            total_nll -= row[w.first_scored - w.begin - 1:].sum().item()
            n_scored += w.end - w.first_scored
    if stride == seq_len:
        protocol = f"non-overlapping {seq_len}-token windows, tail dropped"
    else:
        protocol = f"sliding {seq_len}-token windows, stride {stride}"
    mean_nll = total_nll / n_scored
    return PerplexityResult(math.exp(mean_nll), mean_nll, n_scored, protocol)


# --- distance to the unquantized model ------------------------------------------------------------------


def _kl_windows(n_positions: int, seq_len: int) -> Iterator[slice]:
    return (slice(b, b + seq_len) for b in range(0, n_positions, seq_len))


@torch.inference_mode()
def baseline_logprobs(model, input_ids: torch.Tensor, seq_len: int = 512,
                      n_tokens: int = 2048) -> torch.Tensor:
    """Next-token log-probabilities [n, vocab] of ``model`` at the first ``n`` positions of ``input_ids``.

    ``n`` is ``n_tokens`` rounded down to whole windows of ``seq_len`` (non-overlapping, each on its
    own, as in :func:`perplexity`). Stored as float16 on the CPU: 2048 positions of SmolLM2's 49152-token
    vocabulary take 200 MB, twice that in float32.
    """
    ids = _flat_ids(input_ids)
    _check_lengths(min(n_tokens, len(ids)), seq_len)
    n_positions = min(n_tokens, len(ids)) // seq_len * seq_len
    return torch.cat([
        F.log_softmax(_logits(model, ids[None, window])[0], dim=-1).to("cpu", torch.float16)
        for window in _kl_windows(n_positions, seq_len)
    ])


@dataclass(frozen=True)
class KLResult:
    mean_kl: float  # nats per position, KL(P_baseline || P_model)
    top1_agreement: float  # fraction of positions where the model's top token is the baseline's
    n_tokens: int

    def __str__(self):
        return (f"KL {self.mean_kl:.4f} nats/token, top-1 agreement {self.top1_agreement:.1%} "
                f"({self.n_tokens} tokens)")


@torch.inference_mode()
def kl_divergence(model, baseline: torch.Tensor, input_ids: torch.Tensor, seq_len: int = 512) -> KLResult:
    """KL(P_baseline || P_model) per position, averaged, and top-1 agreement, in float32.

    ``baseline`` comes from :func:`baseline_logprobs` with the same ``input_ids`` and ``seq_len``. Its
    float16 values are renormalized (log-softmax again in float32) so that the baseline against itself
    gives 0. Top-1 agreement counts a position when the model's top token has the baseline's highest
    log-probability, so a tie created by float16 rounding counts as agreement.
    """
    ids = _flat_ids(input_ids)
    n_positions = baseline.shape[0]
    if n_positions > len(ids) or n_positions % seq_len:
        raise QuantlabError(
            f"baseline covers {n_positions} positions, which must be whole windows of seq_len={seq_len} "
            f"within the {len(ids)} ids given: pass the input_ids and seq_len used for baseline_logprobs."
        )
    total_kl, agreements = 0.0, 0
    for window in _kl_windows(n_positions, seq_len):
        logq = F.log_softmax(_logits(model, ids[None, window])[0], dim=-1)
        logp = F.log_softmax(baseline[window].to(logq.device, torch.float32), dim=-1)
        total_kl += (logp.exp() * (logp - logq)).sum().item()
        model_top = logq.argmax(dim=-1, keepdim=True)
        agreements += (logp.gather(-1, model_top)[:, 0] == logp.max(dim=-1).values).sum().item()
    return KLResult(total_kl / n_positions, agreements / n_positions, n_positions)


# --- speed ----------------------------------------------------------------------------------------------


def _synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock time includes it (no-op when CUDA is unused)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class Timer:
    seconds: float | None = None  # filled in when the ``timed`` block ends


@contextmanager
def timed():
    """Wall-clock seconds of the code inside ``with timed() as t:`` (``t.seconds``), GPU work included."""
    timer = Timer()
    _synchronize()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        _synchronize()
        timer.seconds = time.perf_counter() - start


@dataclass(frozen=True)
class SpeedResult:
    prefill_tok_s: float
    decode_tok_s: float
    prefill_ms: float
    decode_ms_per_token: float
    prompt_tokens: int
    new_tokens: int
    repeats: int
    device: str

    def __str__(self):
        return (
            f"prefill {self.prefill_tok_s:.0f} tok/s ({self.prompt_tokens} tok, {self.prefill_ms:.1f} ms), "
            f"decode {self.decode_tok_s:.1f} tok/s ({self.decode_ms_per_token:.1f} ms/token) on {self.device}"
        )


def speed_prompt(tokenizer, prompt_tokens: int) -> torch.Tensor:
    """A fixed prompt of exactly ``prompt_tokens`` tokens, shape [1, prompt_tokens]: the eval text's start."""
    return data.eval_token_ids(tokenizer, prompt_tokens)[None]


def _timed_generate(model, prompt: torch.Tensor, n_new: int, generate_kwargs: dict) -> float:
    """Seconds for ``generate`` to make exactly ``n_new`` tokens greedily after ``prompt``."""
    with timed() as timer:
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                min_new_tokens=n_new, max_new_tokens=n_new, **generate_kwargs)
    if output.shape[1] != prompt.shape[1] + n_new:
        raise QuantlabError(f"generate made {output.shape[1] - prompt.shape[1]} tokens instead of {n_new}; "
                            "check generate_kwargs.")
    return timer.seconds


NOISY_RETRIES = 2  # measure_speed's retries, each with twice the repeats, when timings are too noisy


def _speed_runs(model, prompt: torch.Tensor, new_tokens: int, generate_kwargs: dict, runs: int) -> list[tuple]:
    """``runs`` times (prefill seconds, seconds to generate 1 token, seconds to generate ``new_tokens``)."""
    times = []
    for _ in range(runs):
        with timed() as prefill:
            model(prompt)
        one = _timed_generate(model, prompt, 1, generate_kwargs)
        times.append((prefill.seconds, one, _timed_generate(model, prompt, new_tokens, generate_kwargs)))
    return times


@torch.inference_mode()
def measure_speed(model, tokenizer, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 3,
                  warmup: int = 1, generate_kwargs: dict | None = None) -> SpeedResult:
    """Prefill and decode speed of ``model``: medians of ``repeats`` runs after ``warmup`` unmeasured runs.

    * prefill: one forward pass over a fixed prompt of ``prompt_tokens`` tokens (:func:`speed_prompt`);
    * decode: ``model.generate`` greedily makes exactly ``new_tokens`` tokens from the same prompt, and
      exactly 1 token. The first token comes out of the prefill, so the difference is ``new_tokens - 1``
      decoding steps, with generate's fixed overhead cancelled out:
      ``decode_ms_per_token = (median time for new_tokens - median time for 1) / (new_tokens - 1)``.

    ``generate_kwargs`` go to ``generate`` only, e.g. ``{"cache_implementation": "static"}``, with which
    transformers compiles the decoding step on a GPU; use ``warmup >= 2`` so compilation is not timed.

    On a busy machine the medians can say that ``new_tokens`` tokens took no longer than one; then the runs are
    repeated with twice as many repeats, up to :data:`NOISY_RETRIES` times, before giving up with an error.
    """
    if new_tokens < 2 or repeats < 1 or warmup < 0:
        raise QuantlabError("measure_speed needs new_tokens >= 2, repeats >= 1 and warmup >= 0.")
    prompt = speed_prompt(tokenizer, prompt_tokens).to(model.device)
    generate_kwargs = {"pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id, **(generate_kwargs or {})}
    for retry in range(NOISY_RETRIES + 1):
        runs = _speed_runs(model, prompt, new_tokens, generate_kwargs, (warmup if retry == 0 else 0) + repeats)
        medians = [statistics.median(times) for times in zip(*runs[-repeats:], strict=True)]
        prefill_s, one_token_s, all_tokens_s = medians
        decode_ms = 1000 * (all_tokens_s - one_token_s) / (new_tokens - 1)
        if decode_ms > 0:
            break
        repeats *= 2
    else:
        raise QuantlabError(f"Timings too noisy to tell decoding time, even with {repeats // 2} repeats: is something "
                            "else using the machine? Retry when it is idle, or with more new_tokens.")
    prefill_ms = 1000 * prefill_s
    return SpeedResult(
        prefill_tok_s=1000 * prompt_tokens / prefill_ms,
        decode_tok_s=1000 / decode_ms,
        prefill_ms=prefill_ms,
        decode_ms_per_token=decode_ms,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
        device=str(model.device),
    )


def decode_floor_ms(weight_bytes: int, bandwidth_bytes_per_s: float) -> float:
    """Lowest possible ms per decoded token: every weight is read from memory once per token.

    Example: 270 MB of fp16 weights on a 300 GB/s GPU take at least 0.9 ms per token.
    """
    return 1000 * weight_bytes / bandwidth_bytes_per_s


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise QuantlabError(f"{what} is measured on a CUDA GPU; this machine has none.")


def memory_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5, device: str = "cuda") -> float:
    """Memory bandwidth of ``device`` in bytes/s: a copy of ``n_bytes`` reads and writes each byte once, so it
    moves ``2 * n_bytes``; the median of ``repeats`` copies after one warm-up. On a GPU a device-to-device copy;
    on a CPU (``device="cpu"``, notebooks/11) a large memcpy, with torch's threads."""
    if device.startswith("cuda"):
        _require_cuda("memory bandwidth")
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        with timed() as t:
            dst.copy_(src)
        times.append(t.seconds)
    return 2 * n_bytes / statistics.median(times[1:])


def launch_overhead_s(n_launches: int = 2000) -> float:
    """Seconds per kernel launch from Python: ``n_launches`` additions on a one-element tensor, timed
    together (the GPU work itself is negligible, so this is what each launch costs the CPU side)."""
    _require_cuda("launch overhead")
    x = torch.zeros(1, device="cuda")
    for _ in range(100):  # warm-up
        x.add_(1)
    with timed() as t:
        for _ in range(n_launches):
            x.add_(1)
    return t.seconds / n_launches


@torch.inference_mode()
def kernels_per_decode_step(model, tokenizer, prompt_tokens: int = 32, new_tokens: int = 9) -> float:
    """GPU kernels that one decoding step of ``generate`` runs, counted with ``torch.profiler``:
    (kernels of ``new_tokens`` tokens - kernels of 1 token) / (new_tokens - 1), as in :func:`measure_speed`."""
    _require_cuda("kernels per decoding step")
    from torch.profiler import ProfilerActivity, profile

    prompt = speed_prompt(tokenizer, prompt_tokens).to(model.device)
    kwargs = {"pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id}

    def kernels(n_new: int) -> int:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _timed_generate(model, prompt, n_new, kwargs)
        return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)

    _timed_generate(model, prompt, new_tokens, kwargs)  # warm-up
    return (kernels(new_tokens) - kernels(1)) / (new_tokens - 1)


@dataclass(frozen=True)
class DecodeFloors:
    """The two floors of one decoding step (ms per token) and what they come from (notebook 09)."""

    bandwidth_ms: float  # every weight read once at the measured bandwidth
    launch_ms: float  # the step's kernels at the measured cost of one launch
    kernels_per_token: float
    bandwidth_gb_s: float
    launch_us: float


def decode_floors(model, tokenizer, weight_bytes: int) -> DecodeFloors:
    """Measure both floors of decoding ``model`` on this GPU (see the module docstring)."""
    bandwidth = memory_bandwidth()
    launch = launch_overhead_s()
    kernels = kernels_per_decode_step(model, tokenizer)
    return DecodeFloors(bandwidth_ms=decode_floor_ms(weight_bytes, bandwidth), launch_ms=1000 * kernels * launch,
                        kernels_per_token=kernels, bandwidth_gb_s=bandwidth / 1e9, launch_us=1e6 * launch)
