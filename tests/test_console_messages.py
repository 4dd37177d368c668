"""The console's message catalogs: every key in every locale, and every key a template names exists."""

from __future__ import annotations

import re
from pathlib import Path

from exchange.console.i18n import HERE, LOCALES, load_locale

TEMPLATES = Path(HERE).parent / "templates"
PAGES = Path(HERE).parent / "pages"
# t("key") and t('key') with a literal key, in templates and page modules.
LITERAL_KEY = re.compile(r"""\bt\(\s*["']([A-Za-z0-9_.]+)["']""")


def test_every_locale_has_the_same_keys() -> None:
    keys = {locale: set(load_locale(HERE / locale)) for locale in LOCALES}
    reference = keys[LOCALES[0]]
    for locale, found in keys.items():
        assert found == reference, (
            f"{locale}: missing {sorted(reference - found)[:20]}, extra {sorted(found - reference)[:20]}"
        )


def test_every_literal_key_used_exists() -> None:
    known = set(load_locale(HERE / LOCALES[0]))
    used: dict[str, str] = {}
    for path in [*TEMPLATES.rglob("*.html"), *PAGES.glob("*.py")]:
        for key in LITERAL_KEY.findall(path.read_text(encoding="utf-8")):
            used.setdefault(key, str(path.relative_to(TEMPLATES.parent)))
    missing = {k: where for k, where in used.items() if k not in known and not k.endswith(".")}
    assert not missing, f"message keys used but not in the catalogs: {missing}"
