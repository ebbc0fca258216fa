"""The architecture's rules, checked on autotl's own source: small modules and functions,
no private name imported across modules, no import cycle (see README, Layout)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotl"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), filename=str(path))
        found[name].filename = str(path)
    return found


def imports(name: str, tree: ast.Module) -> list[tuple[str, str]]:
    """(module, imported name) for every `from autotl... import x` and `import autotl...`, at any depth."""
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base == "autotl" or base.startswith("autotl."):
                found += [(base, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("autotl")]
    return found


MODULES = modules()
PACKAGES = {name for name in MODULES if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}


def dependencies(name: str) -> set[str]:
    """The autotl modules `name` imports (a name imported from a package that is itself a module counts as it)."""
    out = set()
    for module, imported in imports(name, MODULES[name]):
        target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else module
        if target in MODULES and target != name:
            out.add(target)
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_small(name):
    tree = MODULES[name]
    lines = len(Path(tree.filename).read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_private_name_of_another(name):
    private = [f"{module}.{imported}" for module, imported in imports(name, MODULES[name])
               if imported.startswith("_") and not imported.startswith("__")]
    assert not private, f"{name} imports private names: {private}"


def test_the_import_graph_has_no_cycle():
    graph = {name: dependencies(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
