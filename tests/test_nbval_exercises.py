"""The nbval plugin that runs each notebook's exercise solutions (tests/nbval_exercises.py) fails a wrong one."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbval")


def run_nbval(folder, solution: str) -> subprocess.CompletedProcess:
    cells = [nbformat.v4.new_code_cell("x = 21"), nbformat.v4.new_code_cell("# Your answers here:\nanswer = None"),
             nbformat.v4.new_code_cell('from quantlab.exercises import check\n\ncheck("exercise 1", answer, 2 * x)')]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), folder / "99_tiny.ipynb")
    (folder / "solutions").mkdir(exist_ok=True)
    (folder / "solutions" / "99_tiny.py").write_text(solution)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "-p", "nbval_exercises", str(folder / "99_tiny.ipynb")],
                          capture_output=True, text=True, cwd=folder,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)})


@pytest.mark.parametrize(("solution", "passes"), [("answer = 2 * x", True), ("answer = x", False),
                                                  ("unrelated = 1", False)])
def test_solutions_run_in_the_notebooks_kernel_and_are_checked(tmp_path, solution, passes):
    result = run_nbval(tmp_path, solution)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert summary.startswith("4 passed" if passes else "1 failed, 3 passed"), summary  # three cells, the solutions
