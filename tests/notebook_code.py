"""Run a notebook's own code in a test: the from-scratch cells stay in the notebook, their one source.

``load_cells("notebooks/13_fp8_hqq_kv_cache.py", "from-scratch")`` reads the jupytext py:percent file with
jupytext's reader and executes, in order, every code cell tagged ``from-scratch``
(``# %% tags=["from-scratch"]``) in a fresh namespace, which it returns. Tagged cells must therefore only
define things (functions, constants) and depend on nothing but their imports and earlier tagged cells.
"""

from pathlib import Path
from types import SimpleNamespace

import jupytext

ROOT = Path(__file__).resolve().parent.parent


def tagged_sources(notebook_py: str | Path, tag: str) -> list[str]:
    """The sources of the code cells of ``notebook_py`` (relative to the repository) tagged ``tag``, in order."""
    path = ROOT / notebook_py
    sources = [cell.source for cell in jupytext.read(path).cells
               if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])]
    if not sources:
        raise LookupError(f"{path} has no code cell tagged {tag!r}")
    return sources


def load_cells(notebook_py: str | Path, tag: str) -> SimpleNamespace:
    """The names defined by the code cells of ``notebook_py`` (relative to the repository) tagged ``tag``."""
    namespace = {"__name__": f"notebook_cells_{tag.replace('-', '_')}"}
    for number, source in enumerate(tagged_sources(notebook_py, tag)):
        exec(compile(source, f"{Path(notebook_py).name}[{tag} #{number}]", "exec"), namespace)  # noqa: S102
    return SimpleNamespace(**{k: v for k, v in namespace.items() if not k.startswith("__")})
