"""The import layers of proxy/, enforced: imports flow one way (app -> edges -> pipeline -> services ->
core), with no cycle, a core of the standard library only, transports that import nothing of idgate (each
used from its own layer up), and edges that share code only through their folder's `_`-prefixed modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[2] / "proxy"
MAX_ROOT_MODULES = 12

# Lowest first: a module may import modules of its own rank or below, never above.
RANKS: tuple[tuple[str, int], ...] = (
    ("proxy.core", 0),
    ("proxy.config", 1), ("proxy.metrics", 1), ("proxy.logs", 1), ("proxy.keys", 1), ("proxy.tracing", 1),
    ("proxy.worker_state", 1),
    ("proxy.policy", 2),
    ("proxy.oidc", 3), ("proxy.audit", 3), ("proxy.aws", 3), ("proxy.assertion", 3), ("proxy.sessions", 3),
    ("proxy.pipeline", 4),
    ("proxy.services", 5),
    ("proxy.edges", 6),
    ("proxy.app", 7),
    ("proxy.dev", 8), ("proxy.cli_audit", 8), ("proxy.cli_policy", 8),
    ("proxy.cli", 9), ("proxy.__main__", 10),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str) -> set[str]:
    """Every module `name` imports, at the top or inside a function (a lazy import is still a dependency)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def idgate_imports(name: str) -> set[str]:
    """The idgate modules `name` imports (a `from package import submodule` counts as the submodule)."""
    targets = set()
    for imported in imported_names(name):
        while imported and imported not in MODULES:
            imported = imported.rpartition(".")[0]
        if imported and imported != name and imported.startswith("proxy"):
            targets.add(imported)
    return targets


GRAPH = {name: idgate_imports(name) for name in MODULES}


def rank(name: str) -> int:
    for prefix, value in RANKS:
        if name == prefix or name.startswith(prefix + "."):
            return value
    raise AssertionError(f"{name} has no layer: add its package to RANKS")


def is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "proxy" and not name.startswith("proxy.transport"):
            rank(name)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return found


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_a_cycle_through_a_lazy_import_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_flow_downward():
    upward = sorted(f"{name} imports {target}" for name, targets in GRAPH.items() for target in targets
                    if name != "proxy" and not name.startswith("proxy.transport") and not target.startswith("proxy.transport")
                    and target != "proxy" and rank(target) > rank(name))
    assert upward == []


def test_core_uses_the_standard_library_only():
    foreign = sorted(f"{name} imports {imported}" for name in MODULES if name.startswith("proxy.core")
                     for imported in imported_names(name)
                     if imported.split(".")[0] not in sys.stdlib_module_names
                     and not imported.startswith("proxy.core") and imported != "__future__")
    assert foreign == []


def test_transport_imports_nothing_of_idgate():
    leaks = sorted(f"{name} imports {target}" for name in MODULES if name.startswith("proxy.transport")
                   for target in GRAPH[name] if not target.startswith("proxy.transport"))
    assert leaks == []


# The lowest layer each transport may be used from: the HTTP/2 server by the listeners (the app), the
# upstream HTTP/1.1 client by the services that send through it (the DynamoDB gateway, proxy.aws) and above.
TRANSPORT_USERS = {"proxy.transport.h2": "proxy.app", "proxy.transport.http1": "proxy.aws"}


def test_each_transport_is_used_from_its_layer_and_above():
    low = sorted(f"{name} uses {target}" for name, targets in GRAPH.items() if not name.startswith("proxy.transport")
                 for target in targets if target.startswith("proxy.transport")
                 for package, lowest in TRANSPORT_USERS.items()
                 if (target == package or target.startswith(package + ".")) and rank(name) < rank(lowest))
    assert low == []


def test_every_transport_has_its_lowest_user_layer():
    packages = {".".join(name.split(".")[:3]) for name in MODULES if name.startswith("proxy.transport.")}
    assert packages == set(TRANSPORT_USERS)


def test_services_import_no_edge_or_app():
    leaks = sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                   if name != "proxy" and not name.startswith("proxy.transport") and rank(name) < rank("proxy.edges")
                   for target in targets if target.startswith(("proxy.edges", "proxy.app")))
    assert leaks == []


def test_edges_import_no_other_edge():
    def surface(name: str) -> bool:
        return name.startswith("proxy.edges.") and not name.rpartition(".")[2].startswith("_")

    crossings = sorted(f"{name} imports {target}" for name, targets in GRAPH.items()
                       if name.startswith("proxy.edges.") for target in targets if surface(target))
    assert crossings == []


def test_few_modules_at_the_package_root():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(loose) <= MAX_ROOT_MODULES, loose
