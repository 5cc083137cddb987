"""Runtimes in the notebooks' headers and in docs/teaching.md come from recorded runs (docs/runtimes.py)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("runtimes", ROOT / "docs" / "runtimes.py")
runtimes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtimes)


def test_runtime_texts_are_current():
    stale = runtimes.stale_files()
    assert not stale, f"run `make runtimes` (then `make sync`): stale {sorted(str(p) for p in stale)}"


def test_the_committed_run_is_summed_from_cell_timings(tmp_path):
    def cell(start, end):
        return {"cell_type": "code", "metadata": {"execution": {
            "iopub.execute_input": f"2026-12-02T10:00:{start:02d}.000000Z",
            "shell.execute_reply": f"2026-12-02T10:00:{end:02d}.500000Z"}}}

    notebook = tmp_path / "99_x.ipynb"
    notebook.write_text(json.dumps({"cells": [cell(0, 3), {"cell_type": "markdown"}, cell(10, 11)]}))
    assert runtimes.committed_run(notebook) == (5.0, "2026-12-02")
    notebook.write_text(json.dumps({"cells": [cell(0, 3), {"cell_type": "code", "metadata": {}}]}))
    assert runtimes.committed_run(notebook) is None  # a cell without timing: not a recorded run


def test_the_newest_passing_gpu_run_wins():
    text = """## 2026-11-27 · NVIDIA H200, 580, 1 MiB
| 01_setup.ipynb | 48 | pass |
| 02_why_quantize.ipynb | 30 | pass |
## 2026-11-28 · NVIDIA H100, 580, 1 MiB
| 01_setup.ipynb | 40 | pass |
| 02_why_quantize.ipynb | 99 | FAIL |
"""
    assert runtimes.gpu_runs(text) == {"01_setup": (40.0, "2026-11-28", "NVIDIA H100"),
                                       "02_why_quantize": (30.0, "2026-11-27", "NVIDIA H200")}
