"""The committed notebooks' outputs are what a reader should see: no library noise, no walls of text.

A cell fails when its committed output has
- anything on stderr (warnings, library logs, llama.cpp's messages): silence it at its source, in plain sight in
  the cell that needs it, or let the cell show it on purpose with the tag ``stderr-expected``;
- a progress bar (a tqdm widget or its text), which reads "0%" in a committed file: bars belong to interactive
  runs, the ``tqdm`` of a long loop can stay when the cell carries the tag ``progress-bar``;
- more than :data:`MAX_LINES` lines of text, unless tagged ``long-output``.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LINES = 40
WIDGET = "application/vnd.jupyter.widget-view+json"
PROGRESS_TEXT = re.compile(r"\d+%\|")  # tqdm's text form: " 45%|████▌     | 9/20"


def text_lines(output: dict) -> int:
    if output["output_type"] == "stream":
        return "".join(output["text"]).count("\n")
    data = output.get("data", {})
    if "text/plain" in data and "image/png" not in data and WIDGET not in data:
        return "".join(data["text/plain"]).count("\n") + 1
    return 0


def is_progress_bar(output: dict) -> bool:
    data = output.get("data", {})
    text = "".join(output.get("text", "")) + "".join(data.get("text/plain", ""))
    return bool(PROGRESS_TEXT.search(text))


def problems(cell: dict) -> list[str]:
    """What is wrong with one code cell's committed output."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    outputs = cell.get("outputs", [])
    found = []
    stderr = [o for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
    if stderr and "stderr-expected" not in tags:
        first = "".join(stderr[0]["text"]).strip().splitlines()[0][:120]
        found.append(f"stderr output ({first!r})")
    if "progress-bar" not in tags and any(is_progress_bar(o) for o in outputs):
        found.append("a progress bar")
    lines = sum(text_lines(o) for o in outputs)
    if lines > MAX_LINES and "long-output" not in tags:
        found.append(f"{lines} lines of output (more than {MAX_LINES})")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_clean(path):
    cells = json.loads(path.read_text())["cells"]
    bad = {i: p for i, cell in enumerate(cells) if cell["cell_type"] == "code" and (p := problems(cell))}
    assert not bad, f"{path.name}: " + "; ".join(f"cell {i}: {', '.join(p)}" for i, p in bad.items())


def test_the_check_sees_noise():
    noisy = {"cell_type": "code", "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stderr", "text": ["Failed to load _C_mxfp8.so\n"]},
        {"output_type": "display_data", "data": {WIDGET: {}, "text/plain": ["Loading:   0%|   | 0/272"]}},
        {"output_type": "stream", "name": "stdout", "text": ["line\n"] * (MAX_LINES + 1)},
    ]}
    assert len(problems(noisy)) == 3
    noisy["metadata"]["tags"] = ["stderr-expected", "progress-bar", "long-output"]
    assert problems(noisy) == []
