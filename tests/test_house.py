"""The house rules the README's picture promises, checked on the source tree: no import circles, no file of
500 lines or more, and no task named outside its task module and the registry."""
from __future__ import annotations

import ast
from pathlib import Path

from lamflow.train.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package it installs as (setup.py's package_dir).
PACKAGES = {"lamflow": "lamflow", "pipelines": "lamflow.pipelines", "lam": "lamflow.lam",
            "datasets": "lamflow.datasets", "train": "lamflow.train"}
SOURCE_FOLDERS = (*PACKAGES, "cluster", "benchmarks")
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [part for part in path.relative_to(ROOT / folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """The lamflow modules ``path`` imports when it runs, lazy imports inside functions included
    (``if TYPE_CHECKING:`` blocks are annotations only and never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotation_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for child in node.body for n in ast.walk(child)}
    imported = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return imported & known


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_back_through_others():
    modules = module_files()
    graph = {name: runtime_imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_source_file_is_under_500_lines():
    long = {str(path.relative_to(ROOT)): lines for folder in SOURCE_FOLDERS for path in (ROOT / folder).rglob("*.py")
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) >= MAX_LINES}
    assert long == {}


def task_names_compared(path: Path) -> list[str]:
    """Task names that ``path`` compares with (``task == "captioning"``, ``task in (...)``) or keys a dict by."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = [key for key in node.keys if key is not None]
        else:
            continue
        for operand in operands:
            for constant in ast.walk(operand):
                if isinstance(constant, ast.Constant) and constant.value in TASK_NAMES:
                    found.append(f"{path.name}:{constant.lineno} {constant.value!r}")
    return found


def test_train_and_the_commands_name_no_task():
    files = [*(ROOT / "train").glob("*.py"), *(ROOT / "lamflow" / "commands").glob("*.py")]
    assert [hit for path in files for hit in task_names_compared(path)] == []


def test_the_task_name_finder_sees_a_comparison(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('if config.task in ("captioning", "other"):\n    pass\nLOSSES = {"classification": 1}\n')
    assert task_names_compared(source) == ["x.py:1 'captioning'", "x.py:3 'classification'"]
