"""The grants model (``grants.conf``) read once, and the answers it gives over a list of policy lines.

The model file is the rule. Its matcher compares request and policy values for equality only, and its
effect allows when some line matches; so Casbin's answer to a request is the first policy line whose
compared values equal the request's. Reading that once from the model lets a decision point answer from
an index per (resource, consumer department) instead of building and asking a pycasbin enforcer per
pair (about 0.2 ms to build each, 25 µs a question). A model outside that reading (other operators,
roles, deny effects) is refused when loaded, so changing the rule cannot silently change its meaning.
``enforcer`` builds the real Casbin enforcer over the same lines, for checks that the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import casbin
from casbin.model import Model

GRANTS_MODEL = Path(__file__).resolve().parent / "grants.conf"
SOME_ALLOW = "some(where (p_eft == allow))"
_EQUALS = re.compile(r"^(?P<a>[rp]_\w+)\s*==\s*(?P<b>[rp]_\w+)$")

Request = tuple[str, ...]
Line = tuple[str, ...]


class UnsupportedModel(ValueError):
    """The model says more than "allow when some line equals the request on these fields"."""


class GrantRule:
    """Which policy values a request must equal, read from the model (token names without ``r_``/``p_``).

    The decision point fills in a line's ``system``, ``purpose`` and ``grant`` and asks with a ``system``
    and a ``purpose``; the model says in which order they stand and which must equal which.
    """

    __slots__ = ("_ask_of", "_line_of", "_request_of", "compared", "grant_at", "path", "policy", "request")

    def __init__(self, path: Path, request: tuple[str, ...], policy: tuple[str, ...], compared: tuple[int, ...]):
        if set(request) != {"system", "purpose"} or set(policy) != {"system", "purpose", "grant"}:
            raise UnsupportedModel(f"{path.name}: requests name a system and a purpose, lines also a grant")
        self.path, self.request, self.policy, self.compared = path, request, policy, compared
        self.grant_at = policy.index("grant")
        self._request_of = _picker(compared)
        self._line_of = _picker(tuple(("system", "purpose", "grant").index(t) for t in policy))
        self._ask_of = _picker(tuple(("system", "purpose").index(t) for t in request))

    @classmethod
    def load(cls, path: Path = GRANTS_MODEL) -> GrantRule:
        """Parses the model with Casbin's own parser and reads its matcher as equalities."""
        model = Model()
        model.load_model(str(path))
        if "g" in model.keys():  # noqa: SIM118 (Casbin's Model has keys() but no __contains__)
            raise UnsupportedModel(f"{path.name}: role definitions are not read by the decision point")
        if model["e"]["e"].value != SOME_ALLOW:
            raise UnsupportedModel(f"{path.name}: the effect must be {SOME_ALLOW!r}")
        request = tuple(t.removeprefix("r_") for t in model["r"]["r"].tokens)
        policy = tuple(t.removeprefix("p_") for t in model["p"]["p"].tokens)
        pairs = _equalities(model["m"]["m"].value, path.name)
        if sorted(pairs) != sorted(request) or len(set(pairs.values())) != len(pairs):
            raise UnsupportedModel(f"{path.name}: each request value must equal exactly one policy value")
        if any(p not in policy for p in pairs.values()):
            raise UnsupportedModel(f"{path.name}: the matcher names a value the policy lines do not hold")
        return cls(path, request, policy, tuple(policy.index(pairs[r]) for r in request))

    def lines(self, grant: str, purpose: str, systems: Iterable[str]) -> tuple[Line, ...]:
        """The policy lines of an active grant, one per system, in the model's order."""
        line_of = self._line_of
        return tuple(line_of((s, purpose, grant)) for s in systems)

    def ask(self, system: str, purpose: str) -> Request:
        """A request in the model's order."""
        return self._ask_of((system, purpose))

    def answers(self, lines: Iterable[Sequence[str]]) -> dict[Request, Sequence[str]]:
        """For each request some line allows, the line Casbin names: the first that matches."""
        out: dict[Request, Sequence[str]] = {}
        request_of = self._request_of
        for line in lines:
            out.setdefault(request_of(line), line)
        return out

    def enforcer(self, lines: Iterable[Sequence[str]]) -> casbin.Enforcer:
        """A pycasbin enforcer of this model holding ``lines`` in order (slow: for checks, not decisions)."""
        enforcer = casbin.Enforcer(str(self.path))
        rules = [list(line) for line in lines]
        if rules:
            enforcer.add_policies(rules)
        return enforcer


def _picker(indexes: tuple[int, ...]) -> Callable[[Sequence[str]], Request]:
    """A function taking the values at ``indexes`` out of a line, always as a tuple."""
    pick: Any = itemgetter(*indexes)
    return pick if len(indexes) > 1 else lambda line: (pick(line),)


def _equalities(matcher: str, name: str) -> dict[str, str]:
    """Request token -> policy token for a matcher of ``r.x == p.y`` terms joined by ``&&``."""
    pairs: dict[str, str] = {}
    for term in matcher.split("&&"):
        found = _EQUALS.match(term.strip())
        if found is None:
            raise UnsupportedModel(f"{name}: matcher term {term.strip()!r} is not r.x == p.y")
        sides = sorted((found["a"], found["b"]))  # p_ sorts before r_
        if not (sides[0].startswith("p_") and sides[1].startswith("r_")) or sides[1][2:] in pairs:
            raise UnsupportedModel(f"{name}: matcher term {term.strip()!r} must compare a request and a policy value")
        pairs[sides[1][2:]] = sides[0][2:]
    return pairs
