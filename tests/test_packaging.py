"""A non-editable `pip install .` ships only the packages setup.py lists: every subpackage of
xlmr_fast must be there (an editable install would hide a missing one)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _listed_packages() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "packages":
            return {elt.value for elt in node.value.elts}
    raise AssertionError("setup.py has no packages=[...] list")


def test_every_subpackage_is_listed_in_setup_py():
    found = {"xlmr_fast"} | {
        "xlmr_fast." + ".".join(p.parent.relative_to(ROOT / "xlmr_fast").parts)
        for p in (ROOT / "xlmr_fast").rglob("__init__.py") if p.parent != ROOT / "xlmr_fast"}
    missing = found - _listed_packages()
    assert not missing, f"setup.py packages=[...] lacks {sorted(missing)}"
