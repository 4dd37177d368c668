"""The layout's import rules, read from the source: the lower layers never reach up into the hub.

``audit/`` is the log's pure parts: it imports nothing of the hub's store, services, server, CLI or
running log (``exchange.auditlog``), so an auditor can use it offline and no import cycle runs
between it and the store. ``policy/`` and ``adapters/`` may use the core (models, errors, the store)
but never the services, the server or the CLI, which wire things together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUB = ("exchange.services", "exchange.server", "exchange.cli")
RULES = {
    "audit": ("exchange.store", "exchange.auditlog", *HUB),
    "policy": HUB,
    "adapters": HUB,
    # federation's core (peers, the division tree, trust and channels): the services and server build on it
    "exchange/federation": HUB,
}


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, as a dotted name; ``from a import b`` names both ``a`` and ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def forbidden(module: str, banned: tuple[str, ...]) -> bool:
    return any(module == b or module.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("package", sorted(RULES))
def test_lower_layers_import_nothing_above_them(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    broken = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path.read_text(encoding="utf-8")))
        if forbidden(module, RULES[package])
    ]
    assert broken == []


def test_the_rule_sees_every_form_of_import() -> None:
    source = (
        "import exchange.store.audit\n"
        "from exchange.services import rights\n"
        "from exchange import server\n"
        "def late():\n    from exchange.cli.main import main\n"
    )
    found = {m for m in imported_modules(source) if forbidden(m, RULES["audit"])}
    assert found == {
        "exchange.store.audit",
        "exchange.services",
        "exchange.services.rights",
        "exchange.server",
        "exchange.cli.main",
        "exchange.cli.main.main",
    }
    assert not forbidden("exchange.storekeeper", ("exchange.store",))
    assert imported_modules("from exchange.models import Page\nfrom . import note\n") == {
        "exchange.models",
        "exchange.models.Page",
    }
