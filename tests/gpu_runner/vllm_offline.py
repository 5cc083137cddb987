"""vLLM without its server: decode time per step from ``LLM.generate``, and where a step's time goes (GPU runner).

Splits what `quantlab.serve`'s load test measures behind the OpenAI API (notebooks/12) into the engine's own time
and the GPU's: for each checkpoint, in a process of its own,

1. ``vllm.LLM`` on the checkpoint (the same flags as ``quantlab.serve.vllm_command``: max length 2048, half the
   GPU's memory, no prefix cache so that every prompt is read again), one warm-up ``generate``;
2. at each batch size, the wall time of ``generate`` with 1 new token and with 1 + N (greedy, ``ignore_eos``),
   median of 3: decode ms/step = (t(1 + N) - t(1)) / N, prefill ms = t(1);
3. one more ``generate`` at batch 1 under vLLM's torch profiler (``profiler_config``): the CUDA kernel time of
   the whole call divided by its steps, against the wall time per step measured in 2. What the kernels do not
   fill is time the GPU waits for the host (scheduling, sampling, detokenizing, Python).

    python tests/gpu_runner/vllm_offline.py --out DIR [--series] [--shape llama-3.1-8b] [--checkpoint L=PATH[:Q]]

Writes DIR/results.json after every checkpoint, and DIR/<label>/profiler_out_0.txt (vLLM's kernel table).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from quantlab import serve

BATCHES = (1, 64)
NEW_TOKENS = 128
PROMPT_TOKENS = 32
REPEATS = 3


def _timed(llm, prompts, params) -> float:
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def _cuda_ms_total(table: str) -> float | None:
    """The "Self CUDA time total" line of a torch profiler table, in ms."""
    match = re.search(r"Self CUDA time total:\s*([\d.]+)\s*(us|ms|s)\b", table)
    if not match:
        return None
    return float(match[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]


def measure_one(label: str, folder: str, quantization: str | None, tokenizer: str | None, out: Path) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    profile_dir = (out / serve._file_name(label)).resolve()
    profile_dir.mkdir(parents=True, exist_ok=True)
    llm = LLM(model=folder, tokenizer=tokenizer, quantization=quantization, max_model_len=2048,
              gpu_memory_utilization=0.5, enable_prefix_caching=False,
              profiler_config={"profiler": "torch", "torch_profiler_dir": str(profile_dir),
                               "torch_profiler_with_stack": False})

    def prompts(batch: int) -> list:
        return [TokensPrompt(prompt_token_ids=[100 + (7 * i + j) % 20000 for j in range(PROMPT_TOKENS)])
                for i in range(batch)]

    def params(tokens: int):
        return SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)

    _timed(llm, prompts(max(BATCHES)), params(NEW_TOKENS))  # warm-up: every graph size this run uses
    row = {"label": label, "folder": folder, "quantization": quantization, "points": []}
    for batch in BATCHES:
        first = statistics.median(_timed(llm, prompts(batch), params(1)) for _ in range(REPEATS))
        runs = [_timed(llm, prompts(batch), params(1 + NEW_TOKENS)) for _ in range(REPEATS)]
        steps = [(t - first) / NEW_TOKENS * 1e3 for t in runs]
        step_ms = statistics.median(steps)
        row["points"].append({"batch": batch, "prefill_ms": first * 1e3, "decode_ms_per_step": step_ms,
                              "min_ms": min(steps), "max_ms": max(steps), "output_tok_s": batch * 1e3 / step_ms})
    llm.start_profile()
    profiled = _timed(llm, prompts(1), params(1 + NEW_TOKENS))
    llm.stop_profile()
    time.sleep(5)  # the worker writes its table after stop
    table_file = profile_dir / "profiler_out_0.txt"
    cuda_ms = _cuda_ms_total(table_file.read_text()) if table_file.is_file() else None
    row["profile"] = {"batch": 1, "steps": 1 + NEW_TOKENS, "wall_ms": profiled * 1e3, "cuda_kernel_ms": cuda_ms,
                      "cuda_kernel_ms_per_step": cuda_ms / (1 + NEW_TOKENS) if cuda_ms else None,
                      "table": str(table_file) if table_file.is_file() else None}
    for trace in profile_dir.glob("*.pt.trace.json*"):  # traces are tens of MB: the table is what comes back
        trace.unlink()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--series", action="store_true", help="the default model: fp16 and FP8 (vLLM)")
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH[:QUANTIZATION]")
    parser.add_argument("--exclude", default="", help="leave out labels that contain any of these (comma list)")
    parser.add_argument("--one", nargs=4, metavar=("LABEL", "FOLDER", "QUANTIZATION", "TOKENIZER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per checkpoint")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        label, folder, quantization, tokenizer = (None if a == "-" else a for a in args.one)
        print("RESULT " + json.dumps(measure_one(label, folder, quantization, tokenizer, out)), flush=True)
        return 0
    checkpoints = dict(serve._parse_checkpoint(spec) for spec in args.checkpoint)
    if args.series:
        checkpoints |= {k: v for k, v in serve._cached_series().items() if k in ("fp16", "FP8 (vLLM)")}
    for name in args.shape:
        checkpoints |= serve.shape_checkpoints(name)
    excluded = [word for word in args.exclude.split(",") if word]
    rows = []
    for label, (folder, quantization) in checkpoints.items():
        if any(word in label for word in excluded):
            continue
        tokenizer = serve.tokenizer_for(folder)
        command = [sys.executable, __file__, "--out", str(out), "--one", label, str(folder), quantization or "-",
                   str(tokenizer) if tokenizer else "-"]
        log = out / f"{serve._file_name(label)}.log"
        start = time.perf_counter()
        try:
            with open(log, "w") as f:
                subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout, check=False,
                               env=os.environ | {"VLLM_RPC_TIMEOUT": "600000"})
        except subprocess.TimeoutExpired:
            pass
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {"label": label, "error": serve.log_tail(log)}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        print(label, json.dumps({k: row[k] for k in ("points", "profile", "error") if k in row}), flush=True)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
