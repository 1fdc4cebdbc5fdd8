"""The folders say what runs in the DAG: stages/ holds its nodes and nothing else, each listing in dvc.yaml every
file of the package it runs; the package (src/chattune) imports no stage, tool or harness module; a tool or the
harness imports no stage."""
import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGE = ROOT / "src" / "chattune"


def module_file(dotted: str) -> Path | None:
    """The project file a dotted module name is, or None for a library."""
    top, *rest = dotted.split(".")
    if top not in ("chattune", "stages", "tools", "harness"):
        return None
    base = (ROOT / "src" if top == "chattune" else ROOT) / top / Path(*rest)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imported(path: Path) -> set[Path]:
    """The project files a file imports (`from a.b import c` counts a/b/c.py where c is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {file for name in names if (file := module_file(name)) and file.is_file()}
    return found


def closure(path: Path) -> set[Path]:
    """A file and every project file it imports, directly or through others."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported(current))
    return seen


def covered(file: Path, deps: list[str]) -> bool:
    return any(file == ROOT / dep or (ROOT / dep).is_dir() and (ROOT / dep) in file.parents for dep in deps)


def test_stages_holds_the_dags_nodes_only():
    assert {path.stem for path in (ROOT / "stages").glob("*.py") if path.stem != "__init__"} == set(STAGES)


def test_every_stage_lists_the_files_it_runs():
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        missing = [file.relative_to(ROOT).as_posix() for file in closure(ROOT / f"stages/{name}.py")
                   if not covered(file, stage["deps"]) and file.name != "__init__.py"]
        assert not missing, f"dvc.yaml: stage {name} runs {sorted(missing)} but does not list them in deps"


def test_the_closure_follows_imports_through_the_package():
    # evaluate reaches the params schema only through other package modules; the closure must still hold it.
    assert PACKAGE / "params.py" in closure(ROOT / "stages/evaluate.py")


def test_nothing_imports_a_stage_and_the_package_imports_only_itself():
    stages = {ROOT / f"stages/{name}.py" for name in STAGES}
    for folder in ("stages", "tools", "harness", "src/chattune"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not imported(path) & stages, f"{path.relative_to(ROOT)} imports a stage"
    outside = [ROOT / "stages", ROOT / "tools", ROOT / "harness"]
    for path in PACKAGE.rglob("*.py"):
        wrong = [file for file in imported(path) if any(folder in file.parents for folder in outside)]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"
