"""The folders say what runs in the DAG: stages/ holds its nodes and nothing else, each listing in dvc.yaml every
file of the package it runs; the package (src/chattune) imports no stage, tool or harness module; a tool or the
harness imports no stage."""
import ast
import subprocess
import sys
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
    assert PACKAGE / "common/params.py" in closure(ROOT / "stages/evaluate.py")


def test_nothing_imports_a_stage_and_the_package_imports_only_itself():
    stages = {ROOT / f"stages/{name}.py" for name in STAGES}
    for folder in ("stages", "tools", "harness", "src/chattune"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not imported(path) & stages, f"{path.relative_to(ROOT)} imports a stage"
    for path in (ROOT / "tools").glob("*.py"):  # a tool is a command line; what two tools share is in the package
        assert not [file for file in imported(path) if ROOT / "tools" in file.parents], f"{path.name} imports a tool"
    outside = [ROOT / "stages", ROOT / "tools", ROOT / "harness"]
    for path in PACKAGE.rglob("*.py"):
        wrong = [file for file in imported(path) if any(folder in file.parents for folder in outside)]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


TRAINING = {"download", "model_source", "base_model", "preprocess", "sft", "dpo"}  # what makes the models


def reruns(path: Path) -> list[str]:
    """The stages an edit of `path` reruns by itself: those whose deps name it or a folder above it (later stages
    rerun only if those change their outputs)."""
    return [name for name, stage in STAGES.items() if covered(path, stage["deps"])]


def retrain_table() -> list[str]:
    """docs/pipeline.md's table: each package file and the stages an edit of it reruns."""
    rows = ["| file | an edit reruns |", "|---|---|"]
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":
            rows.append(f"| `{path.relative_to(PACKAGE).as_posix()}` | {', '.join(reruns(path)) or 'nothing'} |")
    return rows + ["| `stages/<name>.py` | that stage |",
                   "| `tools/`, `harness/`, `docs/`, `tests/`, `conf/` (a preset changes params, not code) | nothing |"]


def test_what_an_edit_reruns_follows_the_rules_and_is_written_down():
    for folder in ("tools", "harness", "docs", "tests", "src/chattune/export", "src/chattune/pages"):
        for path in (ROOT / folder).rglob("*"):
            assert not reruns(path), f"an edit of {path.relative_to(ROOT)} reruns {reruns(path)}"
    run_by_a_stage = set().union(*(closure(ROOT / f"stages/{name}.py") for name in STAGES))
    for path in PACKAGE.rglob("*"):  # deps name no file that no stage runs (a folder dep would let one in)
        if path.suffix == ".py" and path not in run_by_a_stage and path.name != "__init__.py":
            assert not reruns(path), f"no stage runs {path.relative_to(ROOT)}, yet an edit of it reruns {reruns(path)}"
    for path in (PACKAGE / "evaluation").glob("*.py"):  # scoring code reruns no training, but the model card's
        if path.stem not in ("cards", "verdicts"):
            assert not set(reruns(path)) & TRAINING, f"{path.relative_to(ROOT)} reruns {reruns(path)}"
    for path in (PACKAGE / "basemodel").glob("*.py"):  # what the base model is made of: only its own stages
        assert set(reruns(path)) <= {"model_source", "base_model"}, path
    assert "\n".join(retrain_table()) in (ROOT / "docs/pipeline.md").read_text()


def test_importing_the_package_changes_nothing_global():
    """Every module imported in a fresh interpreter: the package's warning filter is not set (the libraries it
    imports set their own) and the packed attention is not registered; loading a base model and register() do."""
    code = ("import importlib, pkgutil, warnings, chattune; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(chattune.__path__, 'chattune.')]; "
            "from transformers import AttentionInterface; "
            "from chattune.training.packed_attention import ATTENTION; "
            "ours = lambda: [f for f in warnings.filters if f[1] and 'gradient_checkpointing' in f[1].pattern]; "
            "assert not ours(), 'a warning filter'; "
            "assert ATTENTION not in AttentionInterface._global_mapping, 'attention registered'; "
            "from chattune.modeling.loading import quiet_renamed_checkpointing; quiet_renamed_checkpointing(); "
            "from chattune.training.packed_attention import register; register(); "
            "assert ours() and ATTENTION in AttentionInterface._global_mapping")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
