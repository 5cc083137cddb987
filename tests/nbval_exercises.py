"""A pytest plugin: nbval also runs every notebook's exercise solutions, in the notebook's own kernel.

After the last cell of ``notebooks/NN_slug.ipynb`` it adds one item, "exercise solutions", which runs
``notebooks/solutions/NN_slug.py`` in the kernel that has just run the notebook (so with its namespace), checks that
it answers every exercise of the answer cell (the code cell before the one that imports
``quantlab.exercises.check``), and then runs that check cell: a wrong solution fails the item. Loaded with
``-p nbval_exercises`` (pyproject.toml), it costs seconds, not a second run of the notebook.
"""

import re
from collections import defaultdict
from pathlib import Path

CHECK_IMPORT = "from quantlab.exercises import check"


def exercise_cell(notebook, solution: str):
    """A code cell: the solution, an assertion that it set every answer, then the notebook's check cell."""
    import nbformat

    code = [c for c in notebook.cells if c.cell_type == "code"]
    checks = [i for i, c in enumerate(code) if CHECK_IMPORT in c.source]
    if not checks or checks[0] == 0:
        return None
    answers = re.findall(r"^(\w+) = None\b", code[checks[0] - 1].source, flags=re.M)
    unanswered = f"[name for name in {answers!r} if globals().get(name) is None]"
    source = "\n".join([solution, f"assert not {unanswered}, 'the solutions leave these unanswered'",
                        code[checks[0]].source])
    return nbformat.v4.new_code_cell(source)  # never run, no outputs: nbval only checks that it raises nothing


def pytest_collection_modifyitems(session, config, items):
    from nbval.plugin import IPyNbCell

    last_cell = {}
    for index, item in enumerate(items):
        if isinstance(item, IPyNbCell):
            last_cell[item.parent] = index
    for parent, index in sorted(last_cell.items(), key=lambda pair: -pair[1]):
        path = Path(str(parent.fspath))
        solution = path.parent / "solutions" / f"{path.stem}.py"
        cell = exercise_cell(parent.nb, solution.read_text()) if solution.is_file() else None
        if cell is not None:
            options = defaultdict(bool, check=False)
            items.insert(index + 1, IPyNbCell.from_parent(parent, name="exercise solutions", cell_num=-1, cell=cell,
                                                          options=options))
