"""The folders say what runs in the DAG: dvc.yaml lists every module a stage runs, and no stage imports
another stage."""
import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """The `stages.*` modules a file imports, as file paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        found |= {f"{name.replace('.', '/')}.py" for name in names if name.startswith("stages.")}
    return found


def closure(module: str) -> set[str]:
    """A stage's own module and every project module it imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(ROOT / current))
    return seen


def test_every_stage_lists_the_modules_it_runs():
    for name, stage in STAGES.items():
        module = f"stages/{name}.py"
        assert stage["cmd"] == f"python -m stages.{name}"
        missing = closure(module) - set(stage["deps"])
        assert not missing, f"dvc.yaml: stage {name} runs {sorted(missing)} but does not list them in deps"


def test_the_closure_follows_imports_through_the_core():
    # evaluate reaches params.py only through other core modules; the closure must still hold it.
    assert {"stages/params.py", "stages/paths.py", "stages/parsing.py"} <= closure("stages/evaluate.py")


def test_no_stage_imports_another_stage():
    for name in STAGES:
        others = {f"stages/{other}.py" for other in STAGES if other != name}
        assert not imported_modules(ROOT / f"stages/{name}.py") & others, name
    core = {p.relative_to(ROOT).as_posix() for p in (ROOT / "stages").glob("*.py")} - {f"stages/{n}.py" for n in STAGES}
    for module in core:
        assert not imported_modules(ROOT / module) & {f"stages/{n}.py" for n in STAGES}, f"{module} imports a stage"
    # What people run by hand lives in tools/, apart from the DAG.
    assert not {"stages/chat.py", "stages/export.py", "stages/bench.py"} & {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "stages").glob("*.py")}
