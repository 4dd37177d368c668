"""The command explains itself: an overview naming every command, and help text on every argument."""

from __future__ import annotations

import argparse

from exchange.cli.main import build_parser
from tests.test_cli_files import _leaves


def test_every_argument_of_every_verb_says_what_it_is() -> None:
    parser = build_parser()
    missing = [
        f"{' '.join(words) or 'exchange'} {action.option_strings or action.dest}"
        for words, verb in [((), parser), *_leaves(parser)]
        for action in verb._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]
    assert not missing, "arguments without help text:\n" + "\n".join(missing)


def test_the_overview_names_every_command_in_plain_text() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "``" not in text
    overview = parser.description or ""
    commands = {words[0] for words, _ in _leaves(parser)}
    assert commands and all(f" {c}," in overview or f" {c}\n" in overview for c in commands), commands
