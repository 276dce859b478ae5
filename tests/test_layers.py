"""The package layout the design promises (docs/design.md), checked on the real import graph.

Every `import` and `from ... import` in sidecar/ and tui/ counts, those inside functions included: a
lazy import is still a dependency, and a circle through one is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each layer may import of the sidecar besides itself (a package's name stands for all its modules).
# Bottom to top: the listener, the formats and observe know nothing of the rest; config knows formats;
# nodes know config; the proxy and the control plane sit on nodes and never import each other.
MAY_IMPORT: dict[str, set[str]] = {
    "sidecar.listener": set(),
    "sidecar.formats": set(),
    "sidecar.observe": set(),
    "sidecar.config": {"sidecar.formats"},
    "sidecar.nodes": {"sidecar.config", "sidecar.formats", "sidecar.observe"},
    # The journal is a store fed rows: it knows the config and the shapes, not the nodes or the data path.
    "sidecar.journal": {"sidecar.config", "sidecar.formats", "sidecar.observe"},
    # Spend sits on the nodes (it sets the budget gate) and feeds the journal.
    "sidecar.spend": {"sidecar.config", "sidecar.formats", "sidecar.observe", "sidecar.nodes", "sidecar.journal"},
    "sidecar.metrics": {"sidecar.nodes", "sidecar.config", "sidecar.formats", "sidecar.observe"},
    "sidecar.telemetry": {
        "sidecar.config",
        "sidecar.formats",
        "sidecar.metrics",  # a failure reason's category, for error.type
        "sidecar.listener.bind",  # StartupError: a config that asks for traces the extra cannot send
    },
    "sidecar.proxy": {
        "sidecar.telemetry.context",  # a request's trace context: ids drawn on the hot path
        "sidecar.nodes",
        "sidecar.config",
        "sidecar.formats",
        "sidecar.observe",
        "sidecar.metrics",
        "sidecar.listener.cycle",  # the name of the disconnect extension: the listener's contract with the app
    },
    "sidecar.control": {
        "sidecar.nodes",
        "sidecar.config",
        "sidecar.formats",
        "sidecar.observe",
        "sidecar.metrics",
        "sidecar.journal",  # GET /v1/requests/{id} reads a request the event replay no longer holds
        "sidecar.listener.bind",  # StartupError: the control socket can stop a start too
    },
    "sidecar.fakes": {"sidecar.formats"},
    "tui": {"sidecar.control.client", "sidecar.observe"},
}
# The process (server, watch), the command line, the demo and logging sit on top and may use anything.
TOP = {"sidecar.server", "sidecar.watch", "sidecar.cli", "sidecar.demo", "sidecar.logs", "sidecar.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in ("sidecar", "tui") for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The project modules `name` imports (a name imported from a package counts as its submodule if
    there is one: `from . import catalog`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("sidecar", "tui"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in ("sidecar", "tui"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports_of(name, path, known)) - {name} for name, path in found.items()}


def layer_of(module: str) -> str | None:
    for layer in sorted(MAY_IMPORT, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def allowed(importer: str, imported: str) -> bool:
    if imported == "sidecar":  # the package face: the version
        return True
    if importer in TOP:
        return not imported.startswith("tui")
    layer = layer_of(importer)
    assert layer is not None, f"{importer} is in no layer: add it to MAY_IMPORT or TOP"
    if layer_of(imported) == layer:
        return True
    return any(imported == ok or imported.startswith(ok + ".") for ok in MAY_IMPORT[layer])


def test_every_import_respects_the_layers() -> None:
    wrong = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if not allowed(a, b))
    assert not wrong, "imports across the layers' rules:\n" + "\n".join(wrong)


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the import circles are the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_strongly_connected_finds_a_circle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_modules() -> None:
    assert strongly_connected(graph()) == []


def test_no_import_circles_between_packages() -> None:
    """A layer is a package (or a top-level module): no two of them may import each other, even through
    different modules."""

    def unit(module: str) -> str:
        return layer_of(module) or module

    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        edges.setdefault(unit(a), set()).update(unit(b) for b in targets if unit(b) != unit(a) and b != "sidecar")
    assert strongly_connected(edges) == []


def test_every_package_says_what_it_owns_and_may_import() -> None:
    for package in MAY_IMPORT:
        if not package.startswith("sidecar."):
            continue
        doc = ast.get_docstring(ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text()))
        assert doc and "Owns:" in doc and "mport" in doc, package


def test_sidecar_never_imports_tui() -> None:
    assert not [a for a, targets in graph().items() if a.startswith("sidecar") for b in targets if b.startswith("tui")]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    return set(out.stdout.split())


def test_run_does_not_import_textual_and_monitor_does_not_import_the_server() -> None:
    server = loaded_after(
        "import sidecar.cli, sidecar.server, sidecar.control.server, sidecar.proxy.app, sidecar.nodes.checker"
    )
    assert "textual" not in server and "tui" not in server
    assert not any(name.startswith("opentelemetry.sdk") for name in server)  # only with traces on (telemetry/start.py)
    monitor = loaded_after("import tui.app, tui.command")
    assert not {"uvicorn", "sidecar.server", "sidecar.proxy.app", "sidecar.nodes.upstream"} & monitor


def test_every_package_is_installed() -> None:
    """pyproject's package list finds every package of the tree: a subpackage it misses (tui.widgets
    under a bare "tui") is absent from the installed wheel, and the monitor fails to import there."""
    import tomllib

    from setuptools import find_packages

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = set(find_packages(str(ROOT), include=found["include"]))
    tree = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for package in ("sidecar", "tui")
        for p in (ROOT / package).rglob("__init__.py")
    }
    assert tree <= packages, sorted(tree - packages)
