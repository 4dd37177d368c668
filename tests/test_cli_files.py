"""No verb ends in a traceback for a file a person got wrong: missing, unreadable, or not what it should be.

The verbs are found in the parser itself, so a verb added later with a file argument is covered
without touching this test: each of its file arguments is given a missing path, a directory (and,
when not run as root, a file without read permission) and, for inputs, a file of garbage. Each must
end with an ``error:`` line naming the file, a non-zero exit code, and no traceback.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange import models as m
from exchange.cli.main import build_parser, main
from tests.harness import AUTHORITY, RunningHub

# Arguments that name a file (or, for `cert issue --out`, a directory) the verb writes.
OUTPUTS = {"out", "provenance", "ca_out"}
# Arguments that must be dates for a verb to reach its files (a period: from the first day to the day after).
DATES = {"from_date": "2026-11-01", "to_date": "2026-12-01"}
DIRECTORY_OUTPUTS = {("cert", "issue", "out")}
# Files whose content is anything at all (the data a provenance statement speaks of): no malformed case.
OPAQUE = {("verify-provenance", "data")}
# What a verb needs besides its required arguments to reach a file it reads only in one mode.
MODES: dict[tuple[str, ...], list[str]] = {
    ("audit", "search", "log"): ["--verify", "--resource", "10101/350200000001", "--key", "{key}"]
}
GARBAGE = b"\xff\xfe\x00 not { what [ it should be: \x80\x81\n"
# Verbs known to take files: the enumeration must find at least these (it cannot pass on finding none).
KNOWN = {
    ("audit", "verify"),
    ("audit", "verify-receipt"),
    ("audit", "cross-receipt"),
    ("audit", "proof"),
    ("audit", "search"),
    ("audit", "export"),
    ("catalog", "load"),
    ("restore",),
    ("backup",),
    ("bind",),
    ("verify-provenance",),
    ("query",),
    ("cert", "export"),
}


def _leaves(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every verb of the command (a parser with a function to run), with the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaves(sub, (*prefix, name))
    if parser.get_default("func") is not None:
        yield prefix, parser


def _file_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.type is Path]


class Argv:
    """Builds a verb's command line: every required argument filled, the one under test given ``value``."""

    def __init__(self, tmp: Path, key: Path) -> None:
        self.tmp, self.key, self.n = tmp, key, 0
        self.placeholder = tmp / "placeholder.txt"
        self.placeholder.write_text("placeholder\n", encoding="utf-8")

    def _fill(self, action: argparse.Action) -> str:
        if action.type is Path:
            if action.dest in OUTPUTS:
                self.n += 1
                return str(self.tmp / f"fresh-{self.n}")
            return str(self.key if action.dest == "key" else self.placeholder)
        if action.choices:
            return str(next(iter(action.choices)))
        if action.dest in DATES:
            return DATES[action.dest]
        return "1" if action.type is int else "x"

    def build(
        self, words: tuple[str, ...], parser: argparse.ArgumentParser, tested: argparse.Action, value: Path
    ) -> list[str]:
        argv = [*words]
        chosen = {id(g._group_actions[0]) for g in parser._mutually_exclusive_groups if g.required}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            given = str(value) if action is tested else None
            needed = action.required or not action.option_strings or id(action) in chosen
            if given is None and not needed:
                continue
            text = given if given is not None else self._fill(action)
            argv += [text] if not action.option_strings else [action.option_strings[0], text]
        return argv + [w.replace("{key}", str(self.key)) for w in MODES.get((*words, tested.dest), [])]


def _cases(tmp: Path, words: tuple[str, ...], dest: str) -> list[tuple[str, Path]]:
    """The bad paths for one argument: (what it is, the path)."""
    where = tmp / "-".join([*words, dest])
    where.mkdir()
    if dest in OUTPUTS:
        existing = where / "a-file"
        existing.write_text("x", encoding="utf-8")
        wrong = existing if (*words, dest) in DIRECTORY_OUTPUTS else where
        return [("in a missing directory", where / "no-such-dir" / "out.file"), ("of the wrong kind", wrong)]
    cases = [("missing", where / "missing.file"), ("a directory", where)]
    if os.geteuid() != 0:  # root reads a file whatever its mode: the directory case stands for it
        locked = where / "locked.file"
        locked.write_text("x", encoding="utf-8")
        locked.chmod(0)
        cases.append(("unreadable", locked))
    if (*words, dest) not in OPAQUE:
        garbage = where / "garbage.file"
        garbage.write_bytes(GARBAGE)
        cases.append(("malformed", garbage))
    return cases


def _problem(argv: list[str], path: Path, capsys: pytest.CaptureFixture[str]) -> str | None:
    """Why a run does not meet the rule, or None when it ends with a clear error about ``path``."""
    try:
        code = main(argv)
    except SystemExit as e:
        return f"argparse refused the command line (exit {e.code}): {capsys.readouterr().err.strip()}"
    out, err = capsys.readouterr()
    if "Traceback" in out + err:
        return f"a traceback:\n{err}"
    if code == 0:
        return "exit code 0"
    if "error:" not in err:
        return f"no `error:` line in {err!r}"
    if str(path) not in err:
        return f"the error does not name the file: {err.strip()!r}"
    return None


def test_every_verb_says_what_is_wrong_with_a_file(
    hub: RunningHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auditor = hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR)
    common = ["--hub", hub.settings.hub_address, "--home", str(tmp_path / "home")]
    builder = Argv(tmp_path, hub.files.audit_verifier)
    failures, seen, runs = [], set(), 0
    for words, parser in _leaves(build_parser()):
        for action in _file_actions(parser):
            seen.add(words)
            identity = auditor if words[0] == "audit" else hub.operator
            for what, path in _cases(tmp_path, words, action.dest):
                argv = [*common, "--identity", str(identity), *builder.build(words, parser, action, path)]
                runs += 1
                problem = _problem(argv, path, capsys)
                if problem:
                    failures.append(f"{' '.join(words)} {action.option_strings or action.dest} {what}: {problem}")
    assert seen >= KNOWN, f"verbs with files not found: {KNOWN - seen}"
    assert not failures, f"{len(failures)} of {runs} runs:\n" + "\n".join(failures)


@pytest.mark.parametrize("content", [None, "directory", GARBAGE])
def test_a_bad_config_file_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | str | None
) -> None:
    path = tmp_path / "exchange.toml"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    assert _problem(["--config", str(path), "whoami"], path, capsys) is None


@pytest.mark.parametrize("kind", ["missing", "a file", "garbage"])
def test_a_bad_identity_is_an_error_not_a_failed_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    identity = tmp_path / "identity"
    if kind == "a file":
        identity.write_bytes(GARBAGE)
    elif kind == "garbage":
        identity.mkdir()
        for name in ("key.pem", "cert.pem", "ca.pem"):
            (identity / name).write_bytes(GARBAGE)
    # No hub listens on port 1: an identity not checked first would end in UNAVAILABLE, which names no file.
    assert _problem(["--hub", "127.0.0.1:1", "--identity", str(identity), "whoami"], identity, capsys) is None
