"""Serve a quantized checkpoint behind an OpenAI-compatible API and load-test it (notebooks/12_serving).

* :func:`serve` starts an engine's server as a subprocess on 127.0.0.1, waits until it answers
  ``/v1/models``, and always stops it again (normal end, exception, interrupted kernel; ``atexit`` as a last
  resort), killing its whole process group. The server's log goes to a file beside the results.
* :func:`llama_cpp_command` (llama-cpp-python's server, GGUF files, CPU) and :func:`vllm_command` (vLLM,
  safetensors checkpoints, GPU) build the command lines.
* :func:`load_test` sends a fixed, bounded set of streaming requests at several concurrency levels with the
  ``openai`` client and measures time to first token (TTFT), time per output token (TPOT), the gaps between
  streamed chunks (ITL) and output tokens/s.
* :func:`sweep` serves several checkpoints one after the other and load-tests each, writing the rows and every
  request's timings beside the logs; ``python -m quantlab.serve`` runs it from a shell (the GPU runner's step).
* :func:`gguf_files` makes the GGUF files of notebooks/06_gguf (F16, Q8_0, Q4_K_M), cached like every
  checkpoint of :mod:`quantlab.methods`.

Why a client of our own: the maintained load testers (vLLM's ``vllm bench serve``, guidellm, aiperf) need
vLLM itself, or pull in dozens of packages and worker processes, too much for a 2-core CI run and the GPU
runner's transfers; the client here is 60 lines over ``openai.AsyncOpenAI`` and reads the same three numbers.
"""

import asyncio
import atexit
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from quantlab import compare, data, ggml, methods, models, shapes
from quantlab.errors import QuantlabError

HOST = "127.0.0.1"  # loopback only: these servers have no authentication
LOG_TAIL_LINES = 20

# llama-cpp-python's `server` extra (what `pip install "llama-cpp-python[server]"` adds), by import name.
LLAMA_CPP_SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
                            "pydantic_settings")
INSTALL_LLAMA_CPP_SERVER = (
    f"pip install fastapi uvicorn sse-starlette 'starlette-context<0.4' pydantic-settings "
    f"(the server extra of llama-cpp-python=={ggml.LLAMA_CPP_VERSION}; pinned in requirements.txt)"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # one of them: a folder with a tokenizer
VLLM_VERSION = "0.25.0"  # pins torch==2.11.0: Colab's and the GPU runner's torch
INSTALL_VLLM = f"pip install vllm=={VLLM_VERSION}   (a CUDA GPU and torch 2.11; it replaces any other torch)"


# --- starting and stopping a server ------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``: a bind succeeds with SO_REUSEADDR, as servers bind (closed
    connections that linger in TIME_WAIT then do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port the operating system picks among the free ones."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def check_port(port: int) -> None:
    if not port_is_free(port):
        raise QuantlabError(
            f"Port {port} on {HOST} is already in use (another server, or one a crashed kernel left behind: "
            f"`lsof -i :{port}` shows which process). Pick another port, e.g. quantlab.serve.free_port(), "
            f"which gives {free_port()} now."
        )


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a server log."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def _start_failed(what: str, log: Path) -> QuantlabError:
    return QuantlabError(
        f"{what}. The last lines of its log ({log}):\n{log_tail(log)}\n"
        "If the engine refuses the checkpoint, the log says why: check that the engine reads this format "
        "(the table in notebooks/12_serving) and that the file or folder is complete."
    )


def stop(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """Stop a server and every process it started: SIGTERM to its process group, SIGKILL after the grace."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace_seconds)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Server:
    """A running server: where it answers and where it logs."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path
    model: str = ""  # the model name the server reports at /v1/models

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"


def _models(base_url: str) -> list[str]:
    with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
        return [entry["id"] for entry in json.load(response)["data"]]


def wait_until_ready(server: Server, timeout: float) -> None:
    """Poll ``/v1/models`` until it answers; fail with the log's tail if the server dies or is too slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _start_failed(f"The {server.name} server exited at start (code {server.process.returncode})",
                                server.log)
        try:
            server.model = _models(server.base_url)[0]
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, IndexError, KeyError):
            time.sleep(0.5)
    raise _start_failed(f"The {server.name} server did not answer {server.base_url}/models within {timeout:.0f} s",
                        server.log)


@contextmanager
def serve(command: list[str], port: int, log: str | os.PathLike, *, name: str = "server",
          timeout: float = 120.0):
    """Run ``command`` (from :func:`llama_cpp_command` or :func:`vllm_command`) until the ``with`` block ends.

    Yields a :class:`Server` once it answers. The server is the leader of a new process group, so stopping it
    also stops the workers it spawned (vLLM's engine core). Its stdout and stderr go to ``log``. If Python
    exits without leaving the block (a kernel shut down mid-cell), an ``atexit`` hook stops it.
    """
    check_port(port)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    _running.add(process)
    atexit.unregister(_stop_running)  # registered once, however many servers
    atexit.register(_stop_running)
    try:
        server = Server(name, port, process, log)
        wait_until_ready(server, timeout)
        yield server
    finally:
        stop(process)
        _running.discard(process)


_running: set[subprocess.Popen] = set()  # servers started by serve() and not stopped yet


def _stop_running() -> None:
    for process in list(_running):
        stop(process)


# --- the engines -------------------------------------------------------------------------------------


def llama_cpp_command(gguf_path: str | os.PathLike, port: int, *, n_threads: int | None = None,
                      n_ctx: int = 1024, model_alias: str | None = None) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server on one GGUF file (CPU).

    ``--interrupt_requests False``: by default this server ends a streaming answer as soon as another request
    arrives, which would cut every answer short under load. ``--logits_all False``: keep the logits of the last
    position only, not of every prompt token. ``n_threads`` (default: half the logical CPUs, one per physical
    core, as llama-cpp-python does for decoding) is used for the prompt too: the server's own default there is
    every logical CPU, which on a busy 2-core machine made the first token many times slower (notebook 06 saw the
    same for decoding). This server runs one request at a time (no batching).
    """
    missing = missing_modules(LLAMA_CPP_SERVER_MODULES)
    if "llama_cpp" in missing:
        raise QuantlabError(f"llama-cpp-python is not installed. Run: {ggml.INSTALL_LLAMA_CPP}")
    if missing:
        raise QuantlabError(f"llama-cpp-python's server needs {', '.join(missing)}. Run: {INSTALL_LLAMA_CPP_SERVER}")
    path = Path(gguf_path)
    if not path.is_file():
        raise QuantlabError(f"No GGUF file at {path}; make one with quantlab.serve.gguf_files() (notebook 06).")
    threads = str(n_threads or max(os.cpu_count() // 2, 1))
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", HOST, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", threads, "--n_threads_batch", threads,
            "--interrupt_requests", "False", "--logits_all", "False", "--model_alias", model_alias or path.stem]


def vllm_command(checkpoint: str | os.PathLike, port: int, *, quantization: str | None = None,
                 tokenizer: str | os.PathLike | None = None, tensor_parallel_size: int = 1,
                 max_model_len: int = 2048, gpu_memory_utilization: float = 0.5,
                 served_model_name: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """vLLM's OpenAI-compatible server (``vllm serve``) on a checkpoint folder (GPU).

    vLLM reads GPTQ and AWQ checkpoints' ``quantization_config`` itself (Marlin kernels where the shapes allow);
    ``quantization="fp8"`` quantizes a 16-bit checkpoint to FP8 while loading, ``"bitsandbytes"`` to NF4.
    ``tokenizer``: a folder with the tokenizer, for a checkpoint saved without one (transformers' GPTQ
    ``save_pretrained`` writes none: see :func:`tokenizer_for`). ``tensor_parallel_size``: GPUs that each hold a
    slice of every layer (``--tensor-parallel-size``), where ``device_map="auto"`` (notebooks/10) gives each GPU
    whole layers, run one after the other.
    """
    if missing_modules(("vllm",)):
        raise QuantlabError(f"vLLM is not installed. On a GPU machine run: {INSTALL_VLLM}")
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise QuantlabError(f"{path} is not a checkpoint folder (no config.json); vLLM serves Hugging Face folders.")
    if tokenizer is None and not has_tokenizer(path):
        raise QuantlabError(f"{path} holds no tokenizer, which vLLM loads from the checkpoint folder: pass "
                            "tokenizer=<the folder of the model it was quantized from>.")
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(path), "--host", HOST,
               "--port", str(port), "--max-model-len", str(max_model_len),
               "--gpu-memory-utilization", str(gpu_memory_utilization),
               "--served-model-name", served_model_name or path.name, "--disable-uvicorn-access-log"]
    if quantization:
        command += ["--quantization", quantization]
    if tokenizer is not None:
        command += ["--tokenizer", str(tokenizer)]
    if tensor_parallel_size > 1:
        if torch.cuda.device_count() < tensor_parallel_size:
            raise QuantlabError(f"Tensor parallel size {tensor_parallel_size} needs {tensor_parallel_size} GPUs; "
                                f"this machine has {torch.cuda.device_count()}. Serve on one GPU "
                                "(tensor_parallel_size=1) or on a machine with more.")
        command += ["--tensor-parallel-size", str(tensor_parallel_size)]
    return command + list(extra)


def vllm_commands(checkpoints: dict[str, tuple[Path, str | None]], tensor_parallel_size: int = 1) -> dict:
    """label -> (port -> ``vllm serve`` command line) for :func:`sweep`, from label -> (folder, ``--quantization``
    or None) as :func:`vllm_checkpoints` and :func:`shape_checkpoints` give them; a folder without a tokenizer
    gets the default model's (:func:`tokenizer_for`). With ``tensor_parallel_size`` > 1 each label ends in
    " TP<n>", so that one-GPU and several-GPU rows stay apart in one table."""
    suffix = f" TP{tensor_parallel_size}" if tensor_parallel_size > 1 else ""
    return {label + suffix: lambda port, f=folder, q=quantization: vllm_command(
                f, port, quantization=q, tokenizer=tokenizer_for(f), tensor_parallel_size=tensor_parallel_size)
            for label, (folder, quantization) in checkpoints.items()}


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def tokenizer_for(checkpoint: str | os.PathLike) -> Path | None:
    """None for a checkpoint folder with its own tokenizer, else the default model's folder: every checkpoint of
    the series is quantized from it (the random shapes carry its tokenizer too), and transformers' GPTQ
    ``save_pretrained`` saves the weights and config only."""
    return None if has_tokenizer(checkpoint) else Path(models.resolve().path)


def _make_gguf(src: models.ModelSource, qtype: str, settings: methods.Settings) -> Path:
    target = methods.quantized_dir(src, f"gguf-{qtype.lower()}", settings)
    if "_K" in qtype:  # a K-quant: llama.cpp's quantizer, from the F16 file
        f16 = _make_gguf(src, "F16", settings)
        methods.cached_or_quantize(target, lambda out: ggml.quantize_with_llama_cpp(f16, out / "model.gguf", qtype))
    else:
        methods.cached_or_quantize(target, lambda out: ggml.write_gguf(src.path, out / "model.gguf", qtype))
    return target / "model.gguf"


def gguf_files(src: models.ModelSource, qtypes: tuple[str, ...] = ("F16", "Q8_0", "Q4_K_M"),
               settings: methods.Settings | None = None) -> dict[str, Path]:
    """The GGUF files of notebooks/06_gguf (F16 and Q8_0 from gguf-py, K-quants from llama.cpp's quantizer),
    made once and cached beside :mod:`quantlab.methods`' checkpoints: Q8_0 and Q4_K_M are the very files
    ``quantlab compare`` makes and measures."""
    settings = settings or methods.Settings()
    return {qtype: _make_gguf(src, qtype, settings) for qtype in qtypes}


# --- the load test -----------------------------------------------------------------------------------


def prompts(n: int = 8, min_chars: int = 100, max_chars: int = 250) -> list[str]:
    """``n`` fixed prompts: the first speeches of 100-250 characters of the evaluation plays (quantlab.data)."""
    speeches = [s for s in data.text("shakespeare", "eval").split("\n\n") if min_chars <= len(s) <= max_chars]
    return speeches[:n]


@dataclass
class RequestResult:
    """One streamed request: seconds to the first streamed text, seconds between streamed chunks, tokens
    generated, seconds to the last streamed text."""

    ttft: float
    itl: list[float]
    output_tokens: int
    seconds: float

    @property
    def tpot(self) -> float:
        """Time per output token after the first (vLLM's TPOT): a chunk can carry several tokens, since a token
        that completes no character streams no text (random-weight models, whose vocabulary outgrows the
        tokenizer's, send about one chunk per three tokens), so this, not the chunk gap, is the decode speed."""
        return (self.seconds - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else float("nan")


@dataclass
class LevelResult:
    """All requests at one concurrency level, and the aggregates."""

    concurrency: int
    requests: list[RequestResult] = field(repr=False)
    seconds: float  # wall time of the level

    @property
    def output_tokens_per_s(self) -> float:
        return sum(r.output_tokens for r in self.requests) / self.seconds

    def summary(self) -> dict:
        """Output tokens/s over the level's wall time; TTFT and TPOT percentiles over requests, ITL percentiles
        pooled over every gap between streamed chunks."""
        ttft = [r.ttft for r in self.requests]
        tpot = [r.tpot for r in self.requests]
        itl = [gap for r in self.requests for gap in r.itl] or [float("nan")]
        return {"concurrency": self.concurrency, "requests": len(self.requests),
                "output tokens": sum(r.output_tokens for r in self.requests),
                "output tok/s": self.output_tokens_per_s,
                "TTFT p50 ms": _ms(ttft, 50), "TTFT p99 ms": _ms(ttft, 99),
                "TPOT p50 ms": _ms(tpot, 50), "TPOT p99 ms": _ms(tpot, 99),
                "ITL p50 ms": _ms(itl, 50), "ITL p99 ms": _ms(itl, 99)}


def _ms(seconds: list[float], q: float) -> float:
    return 1e3 * float(np.percentile(seconds, q))


# What vLLM is asked besides the prompt: the token count in a last chunk (a token that completes no character
# streams no text), and every answer exactly max_tokens long, as `vllm bench serve` does, so that formats do the
# same work (random-weight models would otherwise stop at a random end-of-text token).
VLLM_REQUEST_OPTIONS = {"stream_options": {"include_usage": True}, "extra_body": {"ignore_eos": True}}


async def _one_request(client, model: str, prompt: str, max_tokens: int, options: dict) -> RequestResult:
    """A streaming completion. Tokens: the server's usage count where it sends one, else one per streamed chunk
    with text (llama.cpp and vLLM stream one token per chunk); the inter-token gaps are those between chunks."""
    start = time.perf_counter()
    stamps, counted = [], None
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                             stream=True, **options)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            counted = chunk.usage.completion_tokens
    if not stamps:
        raise QuantlabError(f"The server streamed no text for the prompt {prompt[:40]!r}...")
    gaps = np.diff(stamps).tolist()
    return RequestResult(stamps[0] - start, gaps, counted or len(stamps), stamps[-1] - start)


async def _level(client, model: str, texts: list[str], concurrency: int, max_tokens: int,
                 options: dict) -> LevelResult:
    limit = asyncio.Semaphore(concurrency)

    async def bounded(prompt: str) -> RequestResult:
        async with limit:
            return await _one_request(client, model, prompt, max_tokens, options)

    start = time.perf_counter()
    results = await asyncio.gather(*(bounded(p) for p in texts))
    return LevelResult(concurrency, list(results), time.perf_counter() - start)


async def _load_test(base_url: str, model: str, concurrencies, requests_per_level, max_tokens, timeout, options):
    from openai import AsyncOpenAI

    texts = prompts(max(requests_per_level))
    async with AsyncOpenAI(base_url=base_url, api_key="unused", timeout=timeout, max_retries=0) as client:
        await _one_request(client, model, texts[0], 4, options)  # warm-up, not counted
        return [await _level(client, model, texts[:n], c, max_tokens, options)
                for c, n in zip(concurrencies, requests_per_level, strict=True)]


def load_test(server: Server, concurrencies: tuple[int, ...] = (1, 2, 4), requests: int | None = None,
              max_tokens: int = 32, timeout: float = 120.0, options: dict | None = None) -> list[LevelResult]:
    """Send the fixed prompts of :func:`prompts` to ``server`` at each concurrency level, one level after the
    other: ``requests`` requests per level (default: 2 x the concurrency, at least 4), greedy, ``max_tokens``
    each, after one uncounted warm-up request. Bounded: each request fails after ``timeout`` seconds.
    ``options``: more arguments of the OpenAI client's ``completions.create`` (vLLM: :data:`VLLM_REQUEST_OPTIONS`).

    Works in a script and in a notebook cell (whose event loop is already running: then in a worker thread).
    """
    per_level = [requests or max(2 * c, 4) for c in concurrencies]
    job = _load_test(server.base_url, server.model, concurrencies, per_level, max_tokens, timeout, options or {})
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(job)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, job).result()


def sweep(commands: dict, out: str | os.PathLike, *, concurrencies: tuple[int, ...] = (1, 2, 4),
          requests: int | None = None, max_tokens: int = 32, start_timeout: float = 120.0,
          keep_going: bool = False, options: dict | None = None) -> list[dict]:
    """Serve each checkpoint in turn and load-test it; one row per (checkpoint, concurrency).

    ``commands`` maps a label (the format) to a function of the port that returns the server's command line
    (``lambda port: llama_cpp_command(path, port)``). Every server's log is ``out/<label>.log``, and the rows,
    with each request's timings, go to ``out/results.json``, rewritten after each checkpoint, so a run stopped
    midway keeps what it measured. ``keep_going=True`` records a server that fails to start (its error names the
    log) and goes on with the next one, for unattended GPU runs. ``options``: see :func:`load_test`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, details = [], []
    for label, command in commands.items():
        port = free_port()
        log = out / f"{_file_name(label)}.log"
        try:
            with serve(command(port), port, log, name=label, timeout=start_timeout) as server:
                levels = load_test(server, concurrencies, requests, max_tokens, options=options)
        except QuantlabError as error:
            if not keep_going:
                raise
            rows.append({"format": label, "error": str(error).splitlines()[0], "log": str(log)})
            levels = []
        for level in levels:
            rows.append({"format": label, **level.summary()})
            details.append({"format": label, "concurrency": level.concurrency,
                            "requests": [asdict(r) for r in level.requests]})
        compare.write_atomic(out / "results.json", json.dumps({"rows": rows, "requests": details}, indent=1,
                                                              default=float))
    return rows


def _file_name(label: str) -> str:
    """A label as a file name of letters, digits, '.', '_' and '-' (labels hold spaces and parentheses)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def vllm_checkpoints(src: models.ModelSource, settings: methods.Settings) -> dict[str, tuple[Path, str | None]]:
    """What vLLM serves of the series: label -> (checkpoint folder, ``--quantization`` or None).

    The baseline folder three times (16-bit, FP8 and NF4 quantized by vLLM while loading) and the GPTQ and AWQ
    checkpoints that notebooks 03/05 and ``quantlab compare`` cache (the folders methods.gptq_checkpoint and
    methods.awq_checkpoint write; vLLM reads their quantization_config).
    """
    return {"fp16": (Path(src.path), None),
            "GPTQ int4": (methods.int4_dir(src, "gptq-int4", settings), None),
            "AWQ int4": (methods.int4_dir(src, "awq-int4", settings), None),
            "FP8 (vLLM)": (Path(src.path), "fp8"),
            "NF4 (vLLM bitsandbytes)": (Path(src.path), "bitsandbytes")}


def shape_checkpoints(name: str) -> dict[str, tuple[Path, str | None]]:
    """What vLLM serves of a random-weight shape (:mod:`quantlab.shapes`, notebooks/11), made once in the cache:
    the 16-bit checkpoint twice (as it is, and FP8-quantized by vLLM while loading) and GPTQ and AWQ int4 with
    random packed weights (:func:`quantlab.sweep.random_gptq_checkpoint`). Labels say "random weights"."""
    from quantlab import sweep

    return {f"{name} fp16 (random weights)": (shapes.checkpoint(name), None),
            f"{name} GPTQ int4 (random weights)": (sweep.random_gptq_checkpoint(name), None),
            f"{name} AWQ int4 (random weights)": (sweep.random_awq_checkpoint(name), None),
            f"{name} FP8 (vLLM, random weights)": (shapes.checkpoint(name), "fp8")}


def make_series_checkpoints() -> None:
    """Quantize the GPTQ and AWQ checkpoints of :func:`vllm_checkpoints` that are not cached, with the GPU
    settings of ``quantlab compare`` (a GPU run's first step, before :func:`main` serves them)."""
    src = models.resolve()
    settings = _gpu_settings(src)
    methods.gptq_checkpoint(src, settings)
    methods.awq_checkpoint(src, settings)


def _gpu_settings(src: models.ModelSource) -> methods.Settings:
    from transformers import AutoConfig

    return compare.settings_for("cuda", False, AutoConfig.from_pretrained(src.path))


def _cached_series() -> dict[str, tuple[Path, str | None]]:
    """The entries of :func:`vllm_checkpoints` cached with the GPU settings; the others are named, with the command
    that makes them."""
    src = models.resolve()
    cached = {}
    for label, (folder, quantization) in vllm_checkpoints(src, _gpu_settings(src)).items():
        if (folder / "config.json").is_file():
            cached[label] = (folder, quantization)
        else:
            print(f"{label}: not cached at {folder}; `python -m quantlab.serve --make-checkpoints` makes it")
    return cached


def _parse_checkpoint(spec: str) -> tuple[str, tuple[Path, str | None]]:
    """``LABEL=PATH[:QUANTIZATION]`` -> (label, (folder, quantization or None))."""
    label, _, rest = spec.partition("=")
    path, _, quantization = rest.partition(":")
    return label, (Path(path), quantization or None)


def main(argv: list[str] | None = None) -> int:
    """``python -m quantlab.serve``: serve checkpoints one after the other with vLLM or llama.cpp and load-test
    each (tests/gpu_runner/run.sh serve). ``--checkpoint LABEL=PATH[:QUANTIZATION]``, repeated."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("vllm", "llama.cpp"))
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH[:QUANTIZATION]")
    parser.add_argument("--series", action="store_true",
                        help="vLLM: every cached checkpoint of vllm_checkpoints() with the GPU settings of compare")
    parser.add_argument("--shape", action="append", default=[], choices=[n for n, s in shapes.SHAPES.items()
                                                                          if s.random],
                        help="vLLM: a random-weight shape's fp16, GPTQ, AWQ and FP8 (made once if missing)")
    parser.add_argument("--make-checkpoints", action="store_true",
                        help="make what --series and --shape serve, then stop (no server)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per server (default 1)")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=None, help="per level (default: 2 x concurrency, >= 4)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--out", default="serve-results")
    args = parser.parse_args(argv)
    if args.make_checkpoints:  # the shapes first: random weights are written in seconds on a GPU
        for name in args.shape:
            shape_checkpoints(name)
        make_series_checkpoints()
        return 0
    if args.engine is None:
        parser.error("name an --engine (vllm or llama.cpp)")
    if not (args.checkpoint or args.series or args.shape):
        parser.error("name a --checkpoint, --series or --shape")
    checkpoints = dict(_parse_checkpoint(spec) for spec in args.checkpoint)
    if args.series:
        checkpoints |= _cached_series()
    for name in args.shape:
        checkpoints |= shape_checkpoints(name)
    if args.engine == "vllm":
        commands = vllm_commands(checkpoints, args.tensor_parallel_size)
    else:
        commands = {label: lambda port, p=path: llama_cpp_command(p, port) for label, (path, _) in checkpoints.items()}
    rows = sweep(commands, args.out, concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
                 requests=args.requests, max_tokens=args.max_tokens, start_timeout=args.start_timeout,
                 keep_going=True, options=VLLM_REQUEST_OPTIONS if args.engine == "vllm" else None)
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
