"""One source for the from-scratch code: the package's copy is generated from the notebooks' cells tagged "save"
(`make package`, tests/notebook_code.py), as d2l's `#@save` cells become its library."""

from pathlib import Path

import jupytext
import pytest
from notebook_code import ROOT, SAVE_TAG, SAVED_MODULES, saved_module_source


@pytest.mark.parametrize("module", sorted(SAVED_MODULES))
def test_the_package_copy_is_what_the_notebook_cells_say(module):
    assert (ROOT / module).read_text() == saved_module_source(module), (
        f"{module} differs from the cells tagged {SAVE_TAG!r} in {', '.join(SAVED_MODULES[module][1])}: run "
        "`make package` (and edit the notebook, not the module)")


def test_every_saved_cell_has_a_module():
    saved = {notebook for _, notebooks in SAVED_MODULES.values() for notebook in notebooks}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        tagged = [c for c in jupytext.read(path).cells if SAVE_TAG in c.metadata.get("tags", [])]
        if tagged:
            assert str(Path("notebooks") / path.name) in saved, f"{path.name} has cells tagged {SAVE_TAG!r} " \
                "that no module of SAVED_MODULES collects"
