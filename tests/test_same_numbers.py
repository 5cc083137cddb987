"""The committed notebooks agree with the harness: a method's own notebook and notebook 09 (`quantlab compare`)
print the same perplexity for the same checkpoint on the same protocol (issue: one source of truth).

Notebook 03 quantizes GPTQ and RTN (gptqmodel's), notebook 05 AWQ and notebook 06 the GGUF files with the
harness's settings into the harness's cache folders, notebooks 07 and 08 load bitsandbytes' models with the
harness's configs (08's 4-bit layers on the float32 CPU path, as the harness's), and all of them evaluate with
`quantlab.compare.Protocol`, so on the machine that executed them the numbers must match to the printed decimals.
A re-execution of one notebook alone, on other hardware or with other settings, fails here.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def output_text(name: str) -> str:
    """Every text output of a committed notebook, concatenated."""
    text = []
    for cell in json.loads((NOTEBOOKS / name).read_text())["cells"]:
        for output in cell.get("outputs", []):
            text.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def harness_perplexity(method: str) -> float:
    """The perplexity column of ``method``'s row in notebook 09's printed comparison table."""
    lines = output_text("09_memory_comparison.ipynb").splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    column = [c.strip() for c in header.strip("|").split("|")].index("perplexity")
    row = next(line for line in lines if line.startswith(f"| {method} |"))
    return float(row.strip("|").split("|")[column])


@pytest.mark.parametrize("notebook, pattern, method", [
    ("03_gptq.ipynb", r"^GPTQ int4 g\d+ sym\s+([\d.]+)", "gptq-int4"),
    ("03_gptq.ipynb", r"^RTN int4 g\d+ sym gptqmodel\s+([\d.]+)", "rtn-int4"),
    ("05_awq.ipynb", r"^AWQ\s+([\d.]+)", "awq-int4"),
    ("06_gguf.ipynb", r"^GGUF Q8_0\s+perplexity ([\d.]+)", "gguf-q8_0"),
    ("06_gguf.ipynb", r"^GGUF Q4_0\s+perplexity ([\d.]+)", "gguf-q4_0"),
    ("06_gguf.ipynb", r"^GGUF Q4_K_M\s+perplexity ([\d.]+)", "gguf-q4_k_m"),
    ("07_bnb_int8.ipynb", r"^LLM\.int8 \(threshold 6\)\s+perplexity\s+([\d.]+)", "bnb-int8"),
    ("08_bnb_nf4_qlora.ipynb", r"^NF4 \+ double quant\s+perplexity\s+([\d.]+)", "bnb-nf4"),
    ("08_bnb_nf4_qlora.ipynb", r"^FP4, no double quant\s+perplexity\s+([\d.]+)", "bnb-fp4"),
])
def test_notebook_and_harness_print_the_same_perplexity(notebook, pattern, method):
    match = re.search(pattern, output_text(notebook), flags=re.MULTILINE)
    assert match, f"{notebook}: no perplexity line matching {pattern!r} in its committed outputs"
    assert float(match[1]) == pytest.approx(harness_perplexity(method), abs=0.006), (
        f"{notebook} prints {match[1]} for {method}, notebook 09 {harness_perplexity(method)}: re-execute both "
        "on one machine (`make execute NB=...`) after changing either")
