"""The package's shape, checked: imports flow one way, no cycles, small modules.

The layers, top to bottom (README "Layout"): a module may import its own layer's
packages or lower ones, never a higher one, and no two modules or packages import each
other, however lazily.  ``if TYPE_CHECKING:`` imports are annotations, not dependencies.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tlbench"
LAYERS = [
    {"cli", "testing", "__main__"},
    {"perf"},
    {"run"},
    {"plan", "report"},
    {"plugins", "builtin"},
    {"train"},
    {"backbones", "data"},
    {"store"},
    {"api", ""},  # "": tlbench/__init__.py (the version)
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Exceptions, each with its reason; a listed item that shrinks below the limit fails the
# test so the list stays true.
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every tlbench module ``path`` imports, at top level or inside functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tlbench")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "tlbench":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) - {name} for name, path in found.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in list(edges):
        if v not in index:
            strong(v)
    return result


def test_every_package_has_a_layer():
    assert {package_of(m) for m in modules()} <= set().union(*LAYERS)


def test_imports_flow_down_the_layers():
    upward = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if layer_of(package_of(target)) < layer_of(package_of(module))
    ]
    assert upward == []


def test_no_import_cycle_between_modules_or_packages():
    edges = graph()
    assert cycles(edges) == []
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in edges.items():
        packages[package_of(module)].update(package_of(t) for t in targets)
    for package, targets in packages.items():
        targets.discard(package)
    assert cycles(packages) == []


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's length without its signature and docstring: a typer command declares
    its options in the signature, which reads as a list, not as logic."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def _long_functions(path: Path, name: str):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if body_lines(node) > MAX_FUNCTION_LINES:
                yield f"{name}:{node.name}", body_lines(node)


def test_modules_and_functions_fit_on_a_screen():
    long_modules, long_functions = {}, {}
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules[name] = lines
        long_functions.update(_long_functions(path, name))
    assert sorted(set(long_modules) - set(LONG_MODULES)) == [], long_modules
    assert sorted(set(long_functions) - set(LONG_FUNCTIONS)) == [], long_functions
    assert sorted(set(LONG_MODULES) - set(long_modules)) == [], "no longer long: unlist"
    assert sorted(set(LONG_FUNCTIONS) - set(long_functions)) == [], "no longer long: unlist"


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The checks above can fail: a lazy upward import and a two-module cycle are found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tlbench.cli.app import main\n")
    assert imports_of(module, {"tlbench.cli.app"}) == {"tlbench.cli.app"}
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
