"""Write every notebook's runtime from recorded runs, never by hand: ``make runtimes``.

- CPU: the committed run itself. nbclient records when each cell started and finished in the cell's metadata
  (``execution``) whenever ``make execute`` runs a notebook; the sum over the cells is that run's time.
- GPU: the newest passing nbval run of the notebook in docs/gpu-runs.md (written by tests/gpu_runner/record.py).

The runtime row of each notebook's header (``| this notebook | ... | ... |``) and the ``- **Runtime:**`` line
of its section in docs/teaching.md are rewritten; tests/test_runtimes.py fails while either is out of date.
Standard library only, like colab/build.py.
"""

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
GPU_RUNS = ROOT / "docs" / "gpu-runs.md"
TEACHING = ROOT / "docs" / "teaching.md"
HEADER_ROW = re.compile(r"^# \| this notebook \|.*$", re.M)


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def committed_run(notebook: Path) -> tuple[float, str] | None:
    """(seconds, date) of the run whose outputs are committed, from the cells' execution metadata."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    spans = [c.get("metadata", {}).get("execution", {}) for c in cells]
    spans = [(_time(s["iopub.execute_input"]), _time(s["shell.execute_reply"])) for s in spans
             if "iopub.execute_input" in s and "shell.execute_reply" in s]
    if not spans or len(spans) < len(cells):
        return None
    return sum((end - start).total_seconds() for start, end in spans), spans[0][0].date().isoformat()


def gpu_runs(text: str) -> dict[str, tuple[float, str, str]]:
    """Per notebook stem: (seconds, date, GPU) of its newest passing run in docs/gpu-runs.md."""
    found = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = section.splitlines()[0]  # "2026-11-28 · NVIDIA H200, 580.159.04, 143771 MiB"
        date, _, machine = heading.partition(" · ")
        for name, seconds in re.findall(r"^\| (\d\d_\w+)\.ipynb \| (\d+) \| pass \|$", section, flags=re.M):
            found[name] = (float(seconds), date, machine.split(",")[0])  # later sections are newer
    return found


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def cpu_text(run: tuple[float, str] | None) -> str:
    return f"{duration(run[0])} (the committed run, 2-core CPU, {run[1]})" if run else "not recorded"


def gpu_text(run: tuple[float, str, str] | None) -> str:
    return f"{duration(run[0])} (nbval on an {run[2]}, {run[1]})" if run else "not recorded yet"


def runtimes() -> dict[str, tuple[str, str]]:
    """Per notebook stem: (CPU text, GPU text)."""
    gpu = gpu_runs(GPU_RUNS.read_text()) if GPU_RUNS.exists() else {}
    return {nb.stem: (cpu_text(committed_run(nb)), gpu_text(gpu.get(nb.stem)))
            for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))}


def header_row(cpu: str, gpu: str) -> str:
    return f"# | this notebook | {cpu} | {gpu} |"


def teaching_line(cpu: str, gpu: str) -> str:
    return f"- **Runtime:** CPU: {cpu}. GPU: {gpu}."


def updated_teaching(text: str, times: dict[str, tuple[str, str]]) -> str:
    """docs/teaching.md with the Runtime line of every notebook's section rewritten (sections start '### NN')."""
    parts = re.split(r"(?=^### )", text, flags=re.M)
    for i, part in enumerate(parts):
        number = re.match(r"### (\d\d)\b", part)
        stem = next((s for s in times if number and s.startswith(number.group(1) + "_")), None)
        if stem:
            parts[i] = re.sub(r"^- \*\*Runtime:\*\*.*$", teaching_line(*times[stem]), part, count=1, flags=re.M)
    return "".join(parts)


def stale_files() -> dict[Path, str]:
    """Every file whose runtime text differs from what the records say, with its new text."""
    times = runtimes()
    new = {}
    for stem, (cpu, gpu) in times.items():
        source = NOTEBOOKS / f"{stem}.py"
        text = source.read_text()
        updated = HEADER_ROW.sub(header_row(cpu, gpu), text, count=1)
        if updated != text:
            new[source] = updated
    teaching = updated_teaching(TEACHING.read_text(), times)
    if teaching != TEACHING.read_text():
        new[TEACHING] = teaching
    return new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list stale files and exit 1, write nothing")
    args = parser.parse_args(argv)
    stale = stale_files()
    for path, text in stale.items():
        print(f"{'stale' if args.check else 'updated'}: {path.relative_to(ROOT)}")
        if not args.check:
            path.write_text(text)
    if stale and not args.check:
        print("now run `make sync` so that the .ipynb files get the new headers")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
