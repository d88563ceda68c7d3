"""The layering rules, read from the code's imports (static: nothing is imported or run).

- nothing under ``study/`` imports ``cluster/``;
- no import cycle between the packages, the subpackages counted as units (``study.core`` the
  foundation, ``study.data``, ``study.train``, ``study.method``, the boundary modules of ``study/``,
  ``cluster``, ``analysis``, ``bench``), nor between any two modules. The foundation stands under
  every package, the analysis included (it takes the repository root from it), so ``study`` as a
  whole is not one unit: its boundary modules use the analysis, which uses ``study.core``;
- the trainer (``study/train/``) reaches neither ray, mlflow nor submitit through any chain
  of project imports;
- ``study/method/`` imports only torch, torchvision, numpy, the standard library and itself;
- control flows one way: ``cluster/`` takes from the runner's side of ``study/`` (the runner, the
  resume and reuse helpers, the adaptive loop, the cost estimate) only :data:`CLUSTER_MAY_CALL`
  (the SLURM job calls the runner with its executor), and no code branches on a backend's name
  (``.name ==`` or ``!=`` on a backend, or a ``--cluster`` value compared to a literal).

Every import counts: module level, inside functions (lazy) and under ``if TYPE_CHECKING``.
``importlib.import_module`` and entry points are not imports: a backend loaded that way is a
plugin the core does not name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "cluster", "analysis", "bench")
METHOD_ALLOWED = {"torch", "torchvision", "numpy"}
TRAINER_FORBIDDEN = {"ray", "mlflow", "submitit"}
RUNNER_SIDE = ("study.runner", "study.resume", "study.reuse", "study.adaptive", "study.cost")
CLUSTER_MAY_CALL = {"study.runner": {"execute_study"}}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the project's packages under ``root``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports, anywhere in the file, as dotted names.

    ``from a.b import c`` yields ``a.b.c`` when that is a project module (a submodule),
    else ``a.b``; relative imports are resolved against the module's package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in modules else module)
    return found


def project_target(imported: str, modules: dict[str, Path]) -> str | None:
    """The project module an import loads (its longest known prefix), or None for an outside one."""
    parts = imported.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path = REPO, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> project modules it imports, project module -> outside top-level names)."""
    modules = module_files(root, packages)
    internal: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in modules.items():
        internal[name], external[name] = set(), set()
        for imported in imports_of(name, path, modules):
            target = project_target(imported, modules)
            if target is not None:
                if target != name:
                    internal[name].add(target)
            elif imported.split(".")[0] not in packages:
                external[name].add(imported.split(".")[0])
    return internal, external


def reachable(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if state.get(child) == 1:
                    return path[path.index(child):] + [child]
                if not state.get(child):
                    state[child] = 1
                    path.append(child)
                    stack.append((child, iter(sorted(graph.get(child, ())))))
                    break
            else:
                state[node] = 2
                path.pop()
                stack.pop()
    return None


SUBPACKAGES = ("study.core", "study.data", "study.train", "study.method")


def unit_of(module: str) -> str:
    """The unit a module belongs to: one of SUBPACKAGES, else its top-level package (the boundary modules
    of ``study/`` are the unit ``study``)."""
    return next((p for p in SUBPACKAGES if module == p or module.startswith(p + ".")), module.split(".")[0])


def package_graph(graph: dict[str, set[str]], unit=lambda name: name.split(".")[0]) -> dict[str, set[str]]:
    top = {name: unit(name) for name in graph}
    out: dict[str, set[str]] = {p: set() for p in top.values()}
    for name, targets in graph.items():
        out[top[name]].update(top[t] for t in targets if top[t] != top[name])
    return out


def violations(root: Path = REPO, packages=PACKAGES) -> list[str]:
    """Every broken rule, one line each (empty when the layout keeps them all)."""
    internal, external = import_graph(root, packages)
    problems = []
    for name, targets in sorted(internal.items()):
        if name.split(".")[0] == "study":
            for target in sorted(targets):
                if target.split(".")[0] == "cluster":
                    problems.append(f"{name} imports {target}: nothing under study/ imports cluster/")
    cycle = find_cycle(package_graph(internal, unit_of))
    if cycle:
        problems.append("subpackage import cycle: " + " -> ".join(cycle))
    cycle = find_cycle(internal)
    if cycle:
        problems.append("module import cycle: " + " -> ".join(cycle))
    trainer = {name for name in internal if name == "study.train" or name.startswith("study.train.")}
    for name in sorted(reachable(trainer, internal)):
        for bad in sorted(external[name] & TRAINER_FORBIDDEN):
            problems.append(f"the trainer reaches {bad} through {name}")
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for name in sorted(internal):
        if name == "study.method" or name.startswith("study.method."):
            for target in sorted(internal[name]):
                if not (target == "study.method" or target.startswith("study.method.")):
                    problems.append(f"{name} imports {target}: study/method/ imports only itself in the project")
            for ext in sorted(external[name] - METHOD_ALLOWED - stdlib):
                problems.append(f"{name} imports {ext}: study/method/ imports only torch, torchvision, numpy, stdlib")
    return problems


def one_way_problems(root: Path = REPO, packages=PACKAGES) -> list[str]:
    """cluster/ reaching into the runner's internals, and branches on a backend's name."""
    problems = []
    for name, path in sorted(module_files(root, packages).items()):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if name.split(".")[0] == "cluster":
                if isinstance(node, ast.ImportFrom) and node.module in RUNNER_SIDE:
                    for alias in node.names:
                        if alias.name not in CLUSTER_MAY_CALL.get(node.module, set()):
                            problems.append(f"{name} imports {node.module}.{alias.name}: cluster/ takes only "
                                            f"{CLUSTER_MAY_CALL} of the runner's side")
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name in RUNNER_SIDE:
                            problems.append(f"{name} imports {alias.name}: cluster/ takes only "
                                            f"{CLUSTER_MAY_CALL} of the runner's side")
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                sides = [node.left, *node.comparators]
                on_name = any(isinstance(x, ast.Attribute) and x.attr == "name" and isinstance(x.value, ast.Name)
                              and x.value.id == "backend" for x in sides)
                on_flag = any(isinstance(x, ast.Attribute) and x.attr == "cluster" for x in sides) and any(
                    isinstance(x, ast.Constant) and isinstance(x.value, str) for x in sides)
                if on_name or on_flag:
                    problems.append(f"{name}:{node.lineno} branches on a backend's name")
    return problems


def test_control_flows_one_way():
    assert one_way_problems() == []


@pytest.mark.parametrize(("files", "expected"), [
    ({"cluster/local.py": "from study.runner import execute_study\n"}, None),
    ({"cluster/local.py": "from study.runner import cells_to_run\n"}, "imports study.runner.cells_to_run"),
    ({"cluster/local.py": "def f():\n    from study.resume import summarise\n"}, "imports study.resume.summarise"),
    ({"cluster/local.py": "import study.reuse\n"}, "imports study.reuse"),
    ({"study/runner.py": "def f(backend):\n    if backend.name != 'local':\n        pass\n"},
     "study.runner:2 branches on a backend's name"),
    ({"study/cli.py": "def f(args):\n    return args.cluster == 'slurm'\n"}, "study.cli:2 branches on"),
])
def test_the_one_way_rule_catches_its_breach(tmp_path, files, expected):
    _write(tmp_path, {"study/__init__.py": "", "cluster/__init__.py": "", **files})
    found = one_way_problems(tmp_path, ("study", "cluster"))
    assert found == [] if expected is None else any(expected in line for line in found), found


def test_the_project_keeps_its_layers():
    internal, _ = import_graph()
    assert "study.train.trainer" in internal and "study.method.sampling" in internal  # the scan saw the layout
    assert violations() == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


CLEAN = {
    "study/__init__.py": "",
    "study/core/__init__.py": "",
    "study/core/config.py": "import pydantic\n",
    "study/method/__init__.py": "",
    "study/method/losses.py": "import math\nimport torch\nfrom . import util\n",
    "study/method/util.py": "import numpy as np\n",
    "study/train/__init__.py": "",
    "study/train/trainer.py": "from study.method.losses import x\nfrom study.core import config\n",
    "study/runner.py": "def execute_study():\n    from study.train.trainer import Trainer\n",
    "cluster/__init__.py": "",
    "cluster/local.py": "import ray\nfrom study.runner import execute_study\n",
}


@pytest.mark.parametrize(("change", "expected"), [
    ({}, None),
    ({"study/runner.py": "def go():\n    from cluster.local import run\n"}, "nothing under study/ imports cluster/"),
    ({"study/core/config.py": "import pydantic\ndef f():\n    from study.runner import execute_study\n"}, "module import cycle"),
    ({"study/core/config.py": "def f():\n    import mlflow.tracking\n"}, "the trainer reaches mlflow through study.core.config"),
    ({"study/method/util.py": "def f():\n    import submitit\n"}, "the trainer reaches submitit"),
    ({"study/method/util.py": "import scipy\n"}, "study.method.util imports scipy"),
    ({"study/method/util.py": "from study.core.config import x\n"}, "study.method.util imports study.core.config"),
    ({"study/method/losses.py": "from ..core.config import x\n"}, "study.method.losses imports study.core.config"),
    # the subpackages' graph: the foundation importing a layer that stands on it
    ({"study/core/config.py": "def f():\n    from study.train import trainer\n"},
     "subpackage import cycle: study.train -> study.core -> study.train"),
])
def test_each_rule_catches_its_breach(tmp_path, change, expected):
    """The checker on a small made-up tree: clean as written, and each breach (lazy ones too) is named."""
    _write(tmp_path, {**CLEAN, **change})
    found = violations(tmp_path, ("study", "cluster"))
    if expected is None:
        assert found == []
    else:
        assert any(expected in line for line in found), found
