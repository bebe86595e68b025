"""The import rules of the layout (README, Layout): what each part may import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the exported model files may import besides each other: they load where only these are installed
MODEL_FILE_DEPENDENCIES = {"torch", "transformers", "numpy", "PIL"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, module) of every import statement in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_model_files_import_only_each_other_and_their_dependencies():
    models = ROOT / "radio_vlm" / "models"
    own = {p.stem for p in models.glob("*.py")}
    for path in models.glob("*.py"):
        for level, module in _imports(path):
            top = module.split(".")[0]
            if level:
                assert level == 1 and top in own, (
                    f"{path.name}: relative import {'.' * level}{module} leaves models/"
                )
            else:
                allowed = MODEL_FILE_DEPENDENCIES | set(sys.stdlib_module_names) | {"__future__"}
                assert top in allowed, f"{path.name} imports {module}: exported model code may not need it"


def test_radio_vlm_imports_neither_distill_nor_llava_patch():
    for path in (ROOT / "radio_vlm").rglob("*.py"):
        for level, module in _imports(path):
            top = module.split(".")[0]
            assert level or top not in ("distill", "llava_patch"), f"{path} imports {module}"


def test_distill_and_llava_patch_do_not_import_each_other():
    for package, other in (("distill", "llava_patch"), ("llava_patch", "distill")):
        for path in (ROOT / package).rglob("*.py"):
            assert all(module.split(".")[0] != other for _, module in _imports(path)), (
                f"{path} imports {other}"
            )
