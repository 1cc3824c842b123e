"""The package's structure: no import circles and no upward imports, in Python or in Rust.

The graphs are read from the source tree (not from what happens to be imported at run time),
so a lazy import inside a function counts as an edge: a module that needs another one only
"lazily" still cannot be read without it. Imports under ``if TYPE_CHECKING:`` are annotations
only and do not count. In Rust, ``mod x;`` declares a child and is not an edge; ``use`` and
paths through ``crate::``/``super::``/``self::`` are.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "firstlayer"
RUST = ROOT / "rust"

pytestmark = pytest.mark.skipif(
    not (PACKAGE / "__init__.py").is_file() or not (RUST / "lib.rs").is_file(),
    reason="needs the source tree (tests run from a checkout)",
)


# -- Python -----------------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = ["firstlayer", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _python_modules() -> dict[str, Path]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # The compiled core has only its stub here; it imports nothing of the package.
    modules.update(
        {
            _module_name(p): p
            for p in PACKAGE.rglob("*.pyi")
            if p.with_suffix(".py") not in modules.values()
        }
    )
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def python_import_graph() -> dict[str, set[str]]:
    """``module -> modules of firstlayer it imports`` (resolved to existing modules)."""
    modules = _python_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                # `from pkg import sub` imports the submodule when there is one.
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name in a.b
                    target = target.rpartition(".")[0]
                if target.startswith("firstlayer") and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_python_package_has_no_import_circle() -> None:
    graph = python_import_graph()
    assert len(graph) > 20  # the walk found the package
    assert find_cycles(graph) == []


#: The layers of the package, bottom up (README "Layout"): a module imports only from its own
#: layer or below. Within one layer, the circle test above keeps the imports a tree.
LAYERS = [
    ["_core", "exceptions", "constants", "_validate", "_io", "_progress", "_paths", "_numeric",
     "_arrays", "_display"],
    ["stats", "checkpoint", "sources", "spectrum"],
    ["streaming", "extract"],
    ["profile", "theory", "whitening", "filters", "models"],
    ["train", "distributed", "trajectory", "integrations"],
    ["report"],
    ["reproduce", "demo"],
    ["cli", "__main__"],
]  # fmt: skip


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return len(LAYERS)  # the facade `firstlayer` itself, above everything


def test_every_import_goes_down_the_layers() -> None:
    graph = python_import_graph()
    unplaced = sorted(m for m in graph if m != "firstlayer" and _layer(m) == len(LAYERS))
    assert unplaced == []  # a new top-level module needs its place in LAYERS
    upward = sorted(
        f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)
    )
    assert upward == []


# -- Rust -------------------------------------------------------------------------------------

_USE = re.compile(r"\buse\s+([^;]+);", re.S)
_PATH = re.compile(r"\b((?:crate|super|self)(?:::\w+)+)")


def _rust_module(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(RUST).with_suffix("").parts
    if parts in (("lib",),):
        return ()
    return parts[:-1] if parts[-1] == "mod" else parts


def _expand_use(tree: str) -> Iterator[str]:
    """``a::{b, c::{d}}`` -> ``a::b``, ``a::c::d`` (enough of Rust's grammar for ``use``)."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    if "{" not in tree:
        yield tree
        return
    head, _, rest = tree.partition("{")
    body = rest[: rest.rindex("}")]
    depth, start = 0, 0
    for i, ch in enumerate(body + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            item = body[start:i]
            start = i + 1
            if item:
                yield from _expand_use(head + item)


def rust_use_graph() -> dict[tuple[str, ...], set[tuple[str, ...]]]:
    """``module path -> module paths it uses``, resolved to the files that define them."""
    files = {_rust_module(p): p for p in RUST.rglob("*.rs")}
    graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in files}
    for module, path in files.items():
        text = re.sub(r"//[^\n]*", "", path.read_text())
        text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{.*", "", text, flags=re.S)
        children = set(re.findall(r"\bmod\s+(\w+)\s*;", text))
        paths = [p for use in _USE.findall(text) for p in _expand_use(use)]
        paths += _PATH.findall(text)
        if children:  # `child::item` in the file that declares `mod child;`
            paths += re.findall(rf"(?<![:\w])((?:{'|'.join(children)})(?:::\w+)+)", text)
        for p in paths:
            segments = p.split("::")
            if segments[0] == "crate":
                target = tuple(segments[1:])
            elif segments[0] in ("super", "self") or segments[0] in children:
                base = list(module)  # `self` is this module, `super` its parent
                if segments[0] == "self":
                    segments = segments[1:]
                while segments and segments[0] == "super":
                    base = base[:-1]
                    segments = segments[1:]
                target = (*base, *segments)
            else:
                continue
            while target not in files and target:
                target = target[:-1]
            if target != module and target in files:
                graph[module].add(target)
    return graph


def test_the_rust_core_has_no_use_circle() -> None:
    graph = rust_use_graph()
    assert len(graph) > 8
    named = {"::".join(k) or "lib": {"::".join(t) or "lib" for t in v} for k, v in graph.items()}
    assert find_cycles(named) == []


def test_only_lib_rs_knows_python() -> None:
    knows = sorted(
        str(p.relative_to(ROOT))
        for p in RUST.rglob("*.rs")
        if p.name != "lib.rs" and re.search(r"\b(pyo3|numpy)::", p.read_text())
    )
    assert knows == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert (
        _layer("firstlayer.cli.parser")
        > _layer("firstlayer.report.build")
        > _layer("firstlayer.stats")
    )
    assert _layer("firstlayer") == len(LAYERS)  # importing the facade from inside goes up
    assert list(_expand_use("super::{self, b}")) == ["super::self", "super::b"]
    assert list(_expand_use("crate::a::{b, c::{d, e as f}}")) == [
        "crate::a::b",
        "crate::a::c::d",
        "crate::a::c::e",
    ]
