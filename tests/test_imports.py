"""The feds2r modules import each other without a cycle, imports inside functions counted.

Every module under ``feds2r/`` is parsed with :mod:`ast` (nothing is imported); every import
statement in it, at module level or inside a function or class, is an edge of the module graph,
except those under ``if TYPE_CHECKING:`` (read by type checkers only). The graph must be acyclic:
lower layers (``errors``, ``io``, ``config``, ``engine``) never import upper ones (``server``,
``federation``, ``cli``), not even lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import feds2r

PACKAGE = Path(feds2r.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    """Dotted name -> source file of every module of feds2r (a package is its ``__init__``)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, except inside ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                walk(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest feds2r module that ``name`` (a dotted import target) is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the feds2r modules it imports (``from pkg import sub`` counts ``pkg.sub``)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from a import b`: b is a submodule of a, or a name defined in a
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_graph_sees_function_level_imports() -> None:
    """The walker counts imports inside functions and skips ``if TYPE_CHECKING:``."""
    tree = ast.parse(
        "import a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import b\n"
        "def f():\n    from c import d\n"
        "class K:\n    def g(self):\n        import e\n"
    )
    found = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in _imports(tree)}
    assert found == {"a", "typing", "c", "e"}


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_is_complete() -> None:
    """Known edges are found (a guard against a walker that sees nothing): a package's
    ``__init__`` importing its submodules, absolute ``from`` imports of names and of modules."""
    graph = import_graph()
    assert {"feds2r.config.values", "feds2r.config.toml"} <= graph["feds2r.config"]
    assert "feds2r.errors" in graph["feds2r.config.toml"]
    assert "feds2r.server.inputs" in graph["feds2r.server.pipeline"]
    assert "feds2r.federation.config" in graph["feds2r.federation.round_client"]
    assert sum(len(targets) for targets in graph.values()) > 200


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Private names still imported across modules, each to be made public by its module's owner;
# this list may only shrink.
KNOWN_PRIVATE = {
    ("feds2r.data.world.appearance", "feds2r.data.world.render", "_TEXTURE"),
    ("feds2r.data.world.scene", "feds2r.data.world.render", "_poisson"),
    ("feds2r.data.world.synth", "feds2r.data.world.scene", "_choice"),
    ("feds2r.server.inconsistency", "feds2r.engine.evaluate", "_batches"),
}


def test_no_private_name_imported_across_modules() -> None:
    """A ``_name`` is its module's own: another module that needs it needs a public name."""
    modules = module_names()
    found = set()
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("feds2r"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.add((name, node.module, alias.name))
    assert found <= KNOWN_PRIVATE, f"private names imported across modules: {found - KNOWN_PRIVATE}"


def test_flower_is_imported_only_in_federation() -> None:
    """`flwr` is an optional extra: only the adapters in feds2r/federation/ import it."""
    outside = []
    for name, path in module_names().items():
        if name == "feds2r.federation" or name.startswith("feds2r.federation."):
            continue
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                targets = [node.module or ""]
            if any(t == "flwr" or t.startswith("flwr.") for t in targets):
                outside.append(f"{name}:{node.lineno}")
    assert not outside, f"flwr imported outside feds2r/federation/: {outside}"
