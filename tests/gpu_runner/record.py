"""Append one GPU-runner run to docs/gpu-runs.md from the files `run.sh` wrote (never by hand).

Usage: python tests/gpu_runner/record.py OUT_DIR [OUT_DIR ...]   (one folder per device call of the run)
"""

import datetime
import json
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np

from quantlab.compare import markdown_notes, markdown_table
from quantlab.serve import RequestResult

RUNS = Path(__file__).resolve().parents[2] / "docs" / "gpu-runs.md"
HEADER = """# Runs on the offline GPU runner

Each section is appended by `tests/gpu_runner/record.py` from the output of `tests/gpu_runner/run.sh`.
"""


def notebook_times(junit: Path) -> dict[str, tuple[float, str]]:
    """Per notebook: summed cell seconds and pass/fail, from nbval's junit XML (one test case per cell)."""
    seconds, failed = defaultdict(float), defaultdict(bool)
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("classname", "?").removeprefix("notebooks.")  # "notebooks.01_setup.ipynb"
        seconds[name] += float(case.get("time", 0))
        failed[name] |= case.find("failure") is not None or case.find("error") is not None
    return {n: (seconds[n], "FAIL" if failed[n] else "pass") for n in sorted(seconds)}


T4_VIEW = " (T4 view)"


def view_of(path: Path) -> str:
    """" (T4 view)" for the files of a `run.sh t4-notebooks` step (its TAG starts with -t4), else ""."""
    return T4_VIEW if path.name.startswith(("notebooks-t4", "notebook-results-t4")) else ""


def notebook_results(outs: list[Path]) -> list[tuple[str, str]]:
    """The ``results/NN/results.md`` tables that the `notebooks` step brought back (``notebook-results<TAG>.tgz``),
    labelled "NN" plus the T4 view where that step ran under it; once each, as every later archive of the same
    machine holds the files of the earlier steps too."""
    found = []
    for archive in sorted(p for o in outs for p in o.glob("notebook-results*.tgz")):
        with tarfile.open(archive) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                if re.fullmatch(r"results/\d+/results\.md", member.name):
                    text = tar.extractfile(member).read().decode()
                    found.append((member.name.split("/")[1] + view_of(archive), text.split("\n", 1)[1].strip()))
    return list(dict.fromkeys(found))


def vllm_version(folder: Path) -> str:
    """The version an engine log of ``folder`` names ("Initializing a V1 LLM engine (v0.25.0)"), or "?"."""
    for log in sorted(folder.glob("*.log")):
        if found := re.search(r"LLM engine \(v([\w.+]+)\)", log.read_text(errors="replace")):
            return found.group(1)
    return "?"


def serve_table(data: dict) -> str:
    """`quantlab.serve`'s rows, with TPOT (time per output token after the first) recomputed from each request's
    timings, so that runs from before TPOT was a column show it too."""
    tpot = {(d["format"], d["concurrency"]): [RequestResult(**r).tpot for r in d["requests"]]
            for d in data["requests"]}
    lines = ["| format | concurrency | output tok/s | TTFT p50 ms | TPOT p50 ms | TPOT p99 ms | ITL p50 ms | error |",
             "|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        if "error" in row:
            lines.append(f"| {row['format']} | | | | | | | {row['error']} |")
            continue
        t = 1e3 * np.array(tpot[row["format"], row["concurrency"]])
        lines.append(f"| {row['format']} | {row['concurrency']} | {row['output tok/s']:.0f} | {row['TTFT p50 ms']:.1f} "
                     f"| {np.percentile(t, 50):.2f} | {np.percentile(t, 99):.2f} | {row['ITL p50 ms']:.2f} | |")
    return "\n".join(lines)


def offline_table(rows: list[dict]) -> str:
    """`vllm_offline.py`'s rows: decode ms per step of ``LLM.generate`` by batch, and at batch 1 the CUDA kernel time
    per step from vLLM's profiler beside the wall time per step (the rest is the GPU waiting for the host)."""
    lines = ["| checkpoint | batch | decode ms/step | min-max ms | output tok/s | prefill ms | kernel ms/step "
             "(profiled) | kernels' share of the step | error |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | | | | | | | | {row['error'].strip().splitlines()[-1]} |")
            continue
        kernel = row.get("profile", {}).get("cuda_kernel_ms_per_step")
        for p in row["points"]:
            step = p["decode_ms_per_step"]
            profiled = kernel is not None and p["batch"] == row["profile"]["batch"]
            kernel_cells = f"{kernel:.2f} | {kernel / step:.0%}" if profiled else " | "
            lines.append(f"| {row['label']} | {p['batch']} | {step:.2f} | {p['min_ms']:.2f}-{p['max_ms']:.2f} | "
                         f"{p['output_tok_s']:.0f} | {p['prefill_ms']:.1f} | {kernel_cells} | |")
    return "\n".join(lines)


def section(outs: list[Path]) -> str:
    out = outs[0]
    env = (out / "env.txt").read_text()
    versions = [line.strip() for line in env.splitlines()
                if line.strip().split(" ")[0] in ("torch", "transformers", "gptqmodel", "bitsandbytes", "optimum")]
    t4 = " · with the T4 view (run.sh t4-notebooks)" if any(o.glob("notebooks-t4*.xml") for o in outs) else ""
    lines = [f"## {datetime.date.today()} · {(out / 'gpu.txt').read_text().strip()}{t4}", "",
             "Versions: " + "; ".join(" ".join(v.split()) for v in versions), "", "Steps:", "```",
             *[(o / "steps.txt").read_text().strip() for o in outs if (o / "steps.txt").exists()], "```", ""]
    unit = [(o / "unit.log").read_text().strip().splitlines()[-1] for o in outs if (o / "unit.log").exists()]
    if unit:
        lines += ["Unit tests, in the order they ran: " + "; then ".join(u.strip("= ") for u in unit), ""]
    times = {}
    for junit in [junit for o in outs for junit in sorted(o.glob("notebooks*.xml"))]:
        times.update({f"{name}{view_of(junit)}": result for name, result in notebook_times(junit).items()})
    if times:
        lines += ["| notebook | seconds | result |", "|---|---|---|"]
        lines += [f"| {n} | {s:.0f} | {r} |" for n, (s, r) in sorted(times.items())]
        lines.append("")
    for tag, body in notebook_results(outs):
        lines += [f"What notebook {tag} wrote (`results.md`, below its title):", "", body, ""]
    for results in [o / "compare" / "results.json" for o in outs if (o / "compare" / "results.json").exists()]:
        data = json.loads(results.read_text())
        lines += [f"Compare ({data['meta']['protocol']}):", "", markdown_table(data["results"]), "",
                  *markdown_notes(data["results"]), ""]
    for results in sorted(p for o in outs for p in o.glob("sweep*/results.md")):
        body = results.read_text().split("\n", 1)[1].strip()  # below its own title
        lines += [f"Sweep ({results.parent.name}):", "", body, ""]
    for results in [p for o in outs for p in sorted(o.glob("serve*/results.json"))]:
        lines += [f"vLLM {vllm_version(results.parent)} serving ({results.parent.name}; random-weight rows: speed "
                  "and memory only):", "", serve_table(json.loads(results.read_text())), ""]
    for results in [p for o in outs for p in sorted(o.glob("vllm-offline*/results.json"))]:
        lines += [f"vLLM {vllm_version(results.parent)} offline, `LLM.generate` ({results.parent.name}; 128 new "
                  "tokens, greedy, median of 3; random-weight rows: speed and memory only):", "",
                  offline_table(json.loads(results.read_text())), ""]
    notes = [(o / "notes.md").read_text().strip() for o in outs if (o / "notes.md").exists()]
    if notes:  # what the person who ran it saw: a job that failed for the runner's sake, numbers withheld and why
        lines += ["Notes on this run:", "", *notes, ""]
    checks = [line for o in outs for f in sorted(o.glob("check-*.txt")) for line in f.read_text().splitlines()
              if line.strip() and not line.startswith(("\r", "Loading", "Converting", "Writing", "quantlab:"))]
    if checks:
        lines += ["Checks on the runner's CPU:", "```", *checks, "```", ""]
    return "\n".join(lines)


def main(out_dirs: list[str]) -> None:
    RUNS.parent.mkdir(exist_ok=True)
    text = RUNS.read_text() if RUNS.exists() else HEADER
    RUNS.write_text(text + "\n" + section([Path(d) for d in out_dirs]))
    print(f"appended to {RUNS}")


if __name__ == "__main__":
    main(sys.argv[1:])
