"""Every recipe cell runs alone: a fresh interpreter, offline, nothing from quantlab or from earlier cells.

A recipe is the cell of a method's notebook tagged ``recipe`` (``# %% tags=["recipe", "nbval-skip"]``): the code a
reader copies into their own work. Each one here runs as a script in a fresh Python, in a working folder shared
by the recipes in notebook order (notebook 04's recipe loads the checkpoint that 03's writes), with an
environment that has none of the settings the test suite makes (conftest.py's gptqmodel variables) and progress
bars off (TQDM_DISABLE, and TERM=dumb for gptqmodel's LogBar, as in a notebook). It must exit 0, print fewer than
:data:`MAX_LINES` lines in all (a progress bar redrawn in place counts once, as on screen), and print its
``PROMPT`` followed by at least four generated words.

The recipes name the default model's float checkpoint as ``~/.cache/quantlab/...``, where quantlab converts it;
where ``QUANTLAB_CACHE`` puts it elsewhere, that one line is pointed there (the only change made to a recipe).
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from notebook_code import ROOT, tagged_sources

from quantlab import methods, models

MAX_LINES = 50
MODEL_LINE = 'MODEL = Path.home() / ".cache/quantlab/SmolLM2-135M-Instruct-from-Q4_1-gguf"'
RECIPES = [(path.relative_to(ROOT), number, source)
           for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
           if 'tags=["recipe"' in path.read_text()
           for number, source in enumerate(tagged_sources(path.relative_to(ROOT), "recipe"))]


def recipe_id(recipe) -> str:
    path, number, _ = recipe
    return f"{path.stem}#{number}"


def imported_modules(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name.split(".")[0] for name in names}


def prompt_of(source: str) -> str:
    """The string assigned to ``PROMPT`` in the recipe."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PROMPT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("the recipe assigns no PROMPT literal")


def fresh_environment() -> dict[str, str]:
    """The test process's environment without what this suite sets for itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTQMODEL_", "PYTEST_", "PYTHONPATH"))}
    # TERM=dumb: the output goes to a pipe, as in a notebook, so gptqmodel's LogBar draws no progress animation
    return env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1", "TERM": "dumb"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes")


# The library call that makes each method of `quantlab compare` in a recipe; a method added to the registry needs
# a recipe and a line here (test_every_method_of_the_harness_has_a_recipe). fp8-w8a8's step of notebook 13's recipe
# runs only on a GPU of compute capability 8.9+ (torchao refuses it elsewhere); the others run on a CPU too.
RECIPE_CALLS = {
    "bnb-int8": "BitsAndBytesConfig(load_in_8bit=True", "bnb-nf4": 'bnb_4bit_quant_type="nf4"',
    "bnb-fp4": 'bnb_4bit_quant_type="fp4"', "rtn-int4": "RTNConfig(", "gptq-int4": "GPTQConfig(",
    "awq-int4": "AWQConfig(", "gguf-q8_0": '"Q8_0"', "gguf-q4_0": '"Q4_0"', "gguf-q4_k_m": '"Q4_K_M"',
    "hqq-int4": "BaseQuantizeConfig(nbits=4", "fp8-wo": "Float8WeightOnlyConfig(",
    "fp8-w8a8": "Float8DynamicActivationFloat8WeightConfig(", "kv-int8": "nbits=8", "kv-int4": "QuantizedCache(",
}


def test_the_series_has_recipes():
    assert {path.stem[:2] for path, _, _ in RECIPES} >= {"03", "04", "05", "06", "07", "08", "13"}


@pytest.mark.parametrize("method", sorted(set(methods.REGISTRY) - {"baseline"}))
def test_every_method_of_the_harness_has_a_recipe(method):
    assert method in RECIPE_CALLS, f"{method} is new in quantlab.methods: write its recipe, and add it to RECIPE_CALLS"
    assert any(RECIPE_CALLS[method] in source for _, _, source in RECIPES), (
        f"no recipe calls {RECIPE_CALLS[method]!r}, which makes {method}: add it to its notebook's recipe")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_runs_alone(recipe, workdir):
    path, _, source = recipe
    assert "quantlab" not in imported_modules(source), f"{path}: a recipe uses the libraries only"
    model_path = models.resolve().path  # converts the bundled GGUF once, where the recipes expect it
    if MODEL_LINE in source:
        source = source.replace(MODEL_LINE, f"MODEL = Path({str(model_path)!r})")
    # bytes, decoded here: text=True would make every \r of a progress bar a line of its own
    run = subprocess.run([sys.executable, "-c", source], cwd=workdir, env=fresh_environment(), capture_output=True,
                         timeout=900)
    stdout, stderr = run.stdout.decode(errors="replace"), run.stderr.decode(errors="replace")
    printed = (stdout + stderr).split("\n")  # a progress bar redrawn with \r is one line on screen
    assert run.returncode == 0, f"{path}'s recipe failed:\n" + "\n".join(printed[-40:])
    assert len(printed) < MAX_LINES, f"{path}'s recipe printed {len(printed)} lines:\n" + "\n".join(printed)
    prompt = prompt_of(source)
    assert prompt in stdout, f"{path}'s recipe did not print its prompt and what it generated"
    generated = stdout[stdout.rindex(prompt) + len(prompt):]
    assert len(generated.split()) > 3, f"{path}'s recipe generated too little: {generated!r}"
