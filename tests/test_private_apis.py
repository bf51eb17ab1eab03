"""Non-public Prefect and huggingface_hub interfaces appear only in the two guarded modules
(``tasks/prefect_internals.py``, ``kernelbook_lib/hub_internals.py``), where a test names each."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUARDED = {ROOT / "tasks" / "prefect_internals.py", ROOT / "kernelbook_lib" / "hub_internals.py"}
PRIVATE_MODULES = ("prefect._internal", "prefect.server.api.server", "prefect.utilities.math", "huggingface_hub.utils._")
PRIVATE_NAMES = {"cleanup_lease_ids", "SubprocessASGIServer", "create_app", "_register_atexit", "default_client_factory"}


def uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each import of a private module and each use of a private name (code only:
    docstrings and comments do not count)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            modules = []
        found += [(node.lineno, m) for m in modules if m.startswith(PRIVATE_MODULES)]
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in PRIVATE_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PRIVATE_MODULES) and " " not in node.value:
            found.append((node.lineno, node.value))  # sys.modules.get("prefect.server.api.server")
    return found


def test_private_interfaces_are_used_only_in_the_guarded_modules():
    found = []
    for package in ("kernelbook_lib", "tasks", "flows", "kernelbook_cli"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path not in GUARDED:
                found += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in uses(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "non-public interfaces outside the guarded modules:\n" + "\n".join(found)


def test_the_check_finds_a_private_import():
    assert uses(ast.parse("from prefect.server.api.server import create_app\nx.cleanup_lease_ids\n"))
    assert not uses(ast.parse('"""prefect.server.api.server.create_app in a docstring"""\n'))
