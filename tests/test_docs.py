"""README.md describes the package as it is: every module of quantlab/ in its package table."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_package_table_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| module | what it does |"):].split("\n\n")[0]
    listed = set(re.findall(r"`quantlab\.(\w+)`", table))
    modules = {p.stem for p in (ROOT / "quantlab").glob("*.py")} - {"__init__"}
    assert modules <= listed, f"add to README.md's package table: {sorted(modules - listed)}"
    assert listed <= modules, f"README.md lists modules that do not exist: {sorted(listed - modules)}"


def test_no_package_registry_web_addresses():
    """Packages are named by their package name; the project links no registry's pages."""
    files = [p for p in ROOT.rglob("*") if p.suffix in {".md", ".py", ".toml", ".txt", ".yml", ".sh"}
             and not {".venv", ".git", ".gpu_bundle"} & set(p.parts)]
    hits = [str(p.relative_to(ROOT)) for p in files if re.search(r"pypi\.org/project|pypi\.python\.org", p.read_text())]
    assert not hits, hits
