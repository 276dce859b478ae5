"""The package boundaries the design promises, checked on the real import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def test_sidecar_never_imports_tui() -> None:
    assert not {m for m in imported_modules("sidecar") if m == "tui" or m.startswith("tui.")}


def test_tui_uses_only_the_control_client_shapes_and_display_helpers() -> None:
    used = {m for m in imported_modules("tui") if m.startswith("sidecar")}
    assert used <= {"sidecar.client", "sidecar.shapes", "sidecar.display", "sidecar.stats"}, used


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    return set(out.stdout.split())


def test_run_does_not_import_textual_and_monitor_does_not_import_the_server() -> None:
    server = loaded_after("import sidecar.cli, sidecar.server, sidecar.control, sidecar.proxy, sidecar.checker")
    assert "textual" not in server and "tui" not in server
    monitor = loaded_after("import tui.app, tui.command")
    assert not {"uvicorn", "sidecar.server", "sidecar.proxy", "sidecar.upstream"} & monitor
