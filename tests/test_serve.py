"""quantlab.serve: a server always stops (with the processes it started), and every way it can fail to start is a
clear error. A stand-in server (a few lines of http.server that also start a child process) makes the lifecycle
tests fast; the llama.cpp tests run the real server on the default model's GGUF files."""

import importlib.util
import logging
import socket
import subprocess
import sys
import textwrap

import psutil  # installed with accelerate
import pytest
import torch

from quantlab import methods, models, serve
from quantlab.errors import QuantlabError

# Answers /v1/models like an OpenAI-compatible server, after starting a child that would outlive a careless stop.
STAND_IN = textwrap.dedent("""
    import http.server, json, subprocess, sys
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "stand-in"}]}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Models).serve_forever()
""")


def stand_in(port: int) -> list[str]:
    return [sys.executable, "-c", STAND_IN, str(port)]


def server_tree(server: serve.Server) -> list[psutil.Process]:
    """The server and everything it started; waits until the stand-in's child exists."""
    process = psutil.Process(server.process.pid)
    for _ in range(50):
        if process.children(recursive=True):
            break
        psutil.wait_procs([], timeout=0.1)
    return [process, *process.children(recursive=True)]


def assert_all_gone(processes: list[psutil.Process]) -> None:
    gone, alive = psutil.wait_procs(processes, timeout=15)
    assert not alive, f"still running: {alive}"


def test_server_and_its_children_stop_when_the_block_raises(tmp_path):
    port = serve.free_port()
    with pytest.raises(RuntimeError, match="a cell failed"), \
            serve.serve(stand_in(port), port, tmp_path / "server.log") as server:
        tree = server_tree(server)
        assert len(tree) == 2 and server.model == "stand-in"
        raise RuntimeError("a cell failed")
    assert_all_gone(tree)
    assert serve.port_is_free(port)


def test_server_stops_on_keyboard_interrupt(tmp_path):
    port = serve.free_port()
    with pytest.raises(KeyboardInterrupt), serve.serve(stand_in(port), port, tmp_path / "server.log") as server:
        tree = server_tree(server)
        raise KeyboardInterrupt  # what interrupting the kernel raises in the running cell
    assert_all_gone(tree)


def test_atexit_stops_a_server_whose_block_never_ended(tmp_path):
    """A kernel shut down in the middle of a cell: Python exits without leaving the ``with`` block."""
    port = serve.free_port()
    script = textwrap.dedent(f"""
        import psutil, sys
        from quantlab import serve
        block = serve.serve({stand_in(port)!r}, {port}, {str(tmp_path / 'server.log')!r})
        server = block.__enter__()  # and never __exit__
        process = psutil.Process(server.process.pid)
        while not process.children():
            psutil.wait_procs([], timeout=0.1)
        print(" ".join(str(p.pid) for p in [process, *process.children()]))
    """)
    pids = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=True).stdout.split()
    assert len(pids) == 2
    survivors = [pid for pid in map(int, pids) if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not survivors


def test_port_in_use_is_a_clear_error_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind((serve.HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = psutil.Process().children(recursive=True)
        with pytest.raises(QuantlabError, match=f"Port {port} .* already in use.*free_port"), \
                serve.serve(stand_in(port), port, tmp_path / "server.log"):
            pass
        assert psutil.Process().children(recursive=True) == before


def test_missing_server_extra_names_the_pip_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "sse_starlette" else find_spec(name))
    with pytest.raises(QuantlabError, match="needs sse_starlette. Run: pip install .*sse-starlette"):
        serve.llama_cpp_command(tmp_path / "model.gguf", serve.free_port())


def test_missing_vllm_names_the_pip_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else find_spec(name))
    with pytest.raises(QuantlabError, match=f"vLLM is not installed.*pip install vllm=={serve.VLLM_VERSION}"):
        serve.vllm_command(tmp_path, serve.free_port())


def test_vllm_command_serves_on_loopback_with_the_quantization_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(serve, "missing_modules", lambda modules: [])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(QuantlabError, match="holds no tokenizer.*pass tokenizer="):
        serve.vllm_command(tmp_path, 8123)  # a GPTQ folder as transformers saves it
    assert serve.tokenizer_for(tmp_path) == serve.Path(models.resolve().path)
    command = serve.vllm_command(tmp_path, 8123, quantization="fp8", tokenizer=serve.tokenizer_for(tmp_path))
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--quantization") + 1] == "fp8"
    assert command[command.index("--tokenizer") + 1] == models.resolve().path
    (tmp_path / "tokenizer.json").write_text("{}")
    assert "--tokenizer" not in serve.vllm_command(tmp_path, 8123) and serve.tokenizer_for(tmp_path) is None
    with pytest.raises(QuantlabError, match="no config.json"):
        serve.vllm_command(tmp_path / "missing", 8123)


@pytest.fixture(scope="module")
def gguf():
    pytest.importorskip("llama_cpp")
    return serve.gguf_files(models.resolve())


def test_a_checkpoint_the_engine_refuses_shows_the_log_tail(tmp_path):
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))  # a header and nothing else
    port = serve.free_port()
    log = tmp_path / "bad.log"
    with pytest.raises(QuantlabError, match="exited at start") as failure, \
            serve.serve(serve.llama_cpp_command(bad, port, n_threads=1), port, log, timeout=60):
        pass
    message = str(failure.value)
    assert str(log) in message
    assert serve.log_tail(log, 3).splitlines()[-1] in message  # the log's last line is quoted
    assert serve.port_is_free(port)


def test_llama_cpp_server_answers_the_load_test_and_stops(gguf, tmp_path):
    port = serve.free_port()
    with serve.serve(serve.llama_cpp_command(gguf["Q4_K_M"], port, n_threads=1), port, tmp_path / "q4.log") as server:
        tree = server_tree(server)
        [level] = serve.load_test(server, concurrencies=(2,), requests=2, max_tokens=4)
    assert_all_gone(tree)
    row = level.summary()
    assert row["requests"] == 2 and 2 <= row["output tokens"] <= 8  # at most 4 tokens each, one at least
    assert 0 < row["TTFT p50 ms"] <= row["TTFT p99 ms"]
    assert row["output tok/s"] > 0
    assert "llama" in (tmp_path / "q4.log").read_text().lower()  # the server's own log is kept


def test_gguf_files_are_the_compare_cache(gguf):
    src = models.resolve()
    assert gguf["Q8_0"] == methods.quantized_dir(src, "gguf-q8_0", methods.Settings()) / "model.gguf"
    assert set(gguf) == {"F16", "Q8_0", "Q4_K_M"} and all(path.is_file() for path in gguf.values())


def test_output_to_twice_after_a_handler_bound_its_flush_inside(tmp_path):
    """transformers, first imported inside output_to, binds its handler's flush to the redirected stderr."""
    logger = logging.getLogger("quantlab-test-flush")
    try:
        with methods.output_to(tmp_path / "a.log"):
            handler = logging.StreamHandler()
            handler.flush = sys.stderr.flush
            logger.addHandler(handler)
        with methods.output_to(tmp_path / "b.log"):
            logger.warning("second")
        assert "second" in (tmp_path / "b.log").read_text()
    finally:
        logger.handlers.clear()


def test_cli_serves_each_checkpoint_with_its_quantization(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(serve, "missing_modules", lambda modules: [])
    seen = {}

    def fake_sweep(commands, out, **kwargs):
        seen.update({label: command(8123) for label, command in commands.items()})
        return [{"format": label} for label in commands]

    monkeypatch.setattr(serve, "sweep", fake_sweep)
    assert serve.main(["--engine", "vllm", "--checkpoint", f"fp16={tmp_path}", "--checkpoint", f"FP8={tmp_path}:fp8",
                       "--out", str(tmp_path / "out")]) == 0
    assert "--quantization" not in seen["fp16"]
    assert seen["FP8"][seen["FP8"].index("--quantization") + 1] == "fp8"
    with pytest.raises(SystemExit):
        serve.main(["--engine", "vllm"])  # neither --checkpoint nor --series


def test_sweep_keeps_the_rows_measured_before_a_server_that_fails(monkeypatch, tmp_path):
    def fake_load_test(server, *args, **kwargs):
        return [serve.LevelResult(1, [serve.RequestResult(0.01, [0.005], 2, 0.02)], 0.02)]

    monkeypatch.setattr(serve, "load_test", fake_load_test)
    commands = {"first (fp16)": stand_in, "second": lambda port: [sys.executable, "-c", "raise SystemExit(3)"]}
    with pytest.raises(QuantlabError, match="exited at start"):
        serve.sweep(commands, tmp_path, start_timeout=30)
    saved = serve.json.loads((tmp_path / "results.json").read_text())
    assert [row["format"] for row in saved["rows"]] == ["first (fp16)"]
    assert saved["rows"][0]["output tok/s"] == 100
    assert (tmp_path / "first_fp16.log").is_file()  # a label's spaces and brackets make no odd file name


class FakeStream:
    """What openai's AsyncOpenAI streams: chunks with choices[0].text, and a last one with usage only."""

    def __init__(self, texts, usage):
        from types import SimpleNamespace as NS
        self.chunks = [NS(choices=[NS(text=t)], usage=None) for t in texts]
        if usage is not None:
            self.chunks.append(NS(choices=[], usage=NS(completion_tokens=usage)))

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


class FakeClient:
    def __init__(self, texts, usage):
        from types import SimpleNamespace as NS
        self.asked = {}
        self.stream = FakeStream(texts, usage)
        self.completions = NS(create=self.create)

    async def create(self, **kwargs):
        self.asked = kwargs
        return self.stream


@pytest.mark.parametrize("usage, tokens", [(5, 5), (None, 3)])
def test_tokens_are_the_servers_count_when_it_sends_one(usage, tokens):
    """vLLM's last chunk counts tokens that streamed no text (a character's first byte); llama.cpp's server
    sends no count, and every chunk with text is a token."""
    client = FakeClient(["a", "", "b", "", "c"], usage)
    result = serve.asyncio.run(serve._one_request(client, "m", "prompt", 5, serve.VLLM_REQUEST_OPTIONS))
    assert result.output_tokens == tokens and len(result.itl) == 2
    assert client.asked["extra_body"] == {"ignore_eos": True} and client.asked["stream"] is True


def test_cli_serves_a_shapes_random_checkpoints_labelled_so(monkeypatch, tmp_path):
    folders = {name: tmp_path / name for name in ("fp16", "gptq", "awq")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(serve.shapes, "checkpoint", lambda name: folders["fp16"])
    from quantlab import sweep
    monkeypatch.setattr(sweep, "random_gptq_checkpoint", lambda name: folders["gptq"])
    monkeypatch.setattr(sweep, "random_awq_checkpoint", lambda name: folders["awq"])
    monkeypatch.setattr(serve, "missing_modules", lambda modules: [])
    seen = {}

    def fake_sweep(commands, out, **kwargs):
        seen.update({label: command(8123) for label, command in commands.items()}, options=kwargs["options"])
        return [{"format": label} for label in commands]

    monkeypatch.setattr(serve, "sweep", fake_sweep)
    assert serve.main(["--engine", "vllm", "--shape", "llama-3.1-8b", "--out", str(tmp_path / "out")]) == 0
    labels = [label for label in seen if label != "options"]
    assert len(labels) == 4 and all("random weights" in label for label in labels)
    fp8 = seen["llama-3.1-8b FP8 (vLLM, random weights)"]
    assert fp8[fp8.index("--quantization") + 1] == "fp8" and str(folders["fp16"]) in fp8
    assert seen["options"] == serve.VLLM_REQUEST_OPTIONS


def test_tpot_is_per_token_where_chunks_carry_several():
    """11 tokens in 3 chunks, the last 0.5 s after the first: 50 ms per token after the first, 250 ms per chunk."""
    request = serve.RequestResult(ttft=0.1, itl=[0.25, 0.25], output_tokens=11, seconds=0.6)
    row = serve.LevelResult(1, [request], seconds=0.6).summary()
    assert row["TPOT p50 ms"] == pytest.approx(50) and row["ITL p50 ms"] == pytest.approx(250)
    assert row["output tok/s"] == pytest.approx(11 / 0.6)


def test_tensor_parallel_asks_for_the_gpus_it_needs(monkeypatch, tmp_path):
    monkeypatch.setattr(serve, "missing_modules", lambda modules: [])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(QuantlabError, match="needs 2 GPUs; this machine has 1"):
        serve.vllm_command(tmp_path, 8123, tensor_parallel_size=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    [(label, command)] = serve.vllm_commands({"8B fp16": (tmp_path, None)}, tensor_parallel_size=2).items()
    line = command(8123)
    assert label == "8B fp16 TP2" and line[line.index("--tensor-parallel-size") + 1] == "2"
    assert "--tensor-parallel-size" not in serve.vllm_command(tmp_path, 8123)  # one GPU: vLLM's default
