"""Decision latency against the number of grants: the hub's decision point next to plain Casbin.

Run: .venv/bin/python bench/decision.py [--sizes 1000 10000 100000] [--samples 2000] [--no-plain]

For each size it builds that many active grants (spread over 1,000 resources
and 400 consumer departments, two systems each), then measures on this machine,
in the same run:
- build: making the decision point from all the grants (what a start or a new replica waits for);
- dry: the first decision for a question as a dry run (cache miss: the pair's kept answer of the
  Casbin model, index checks; no quota lease taken), on questions the cold samples do not ask;
- cold: the first decision for a question, using the grant's quota (a lease on its first call);
- repeated: the same question again (cache hit, quota still counted);
- plain enforce: one Casbin enforcer holding every grant line, as a naive hub would.
It prints p50 and p99 in microseconds and the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import casbin

from exchange import models as m
from policy.decision import DecisionPoint, Question

TODAY = dt.date(2026, 11, 23)
PLAIN_MODEL = """
[request_definition]
r = system, resource, purpose
[policy_definition]
p = system, resource, purpose, grant
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = r.system == p.system && r.resource == p.resource && r.purpose == p.purpose
"""


def grants(n: int) -> list[m.Grant]:
    out = []
    for i in range(n):
        resource, department = i % 1000, (i // 1000) % 400
        out.append(
            m.Grant(
                id=f"GR-{i}",
                request_id=f"SR-{i}",
                resource_code=f"10101/{resource:012d}",
                consumer_department_code=f"D{department:03d}",
                system_codes=(f"sys-{department}-a", f"sys-{department}-b"),
                fields=("name", "id_number", "address"),
                purpose=f"事项{i % 7}",
                legal_basis="依据",
                start=TODAY - dt.timedelta(days=30),
                end=TODAY + dt.timedelta(days=300),
                daily_quota=10**9,
                rate_per_second=0,
                masks=(("id_number", m.MaskKind.ID_NUMBER),),
                status=m.GrantStatus.ACTIVE,
                issued_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
            )
        )
    return out


def question(g: m.Grant) -> Question:
    return Question(g.system_codes[0], g.consumer_department_code, g.resource_code, g.purpose, ("id_number",))


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int, samples: int, *, freeze: bool, plain: bool) -> dict[str, float]:
    all_grants = grants(n)
    started = time.perf_counter()
    point = DecisionPoint(all_grants)
    build = time.perf_counter() - started
    if freeze:
        gc.collect()
        gc.freeze()  # long-lived grants out of the collector's way, as a serving hub would do after start
    drawn = random.Random(n).sample(all_grants, min(2 * samples, n))
    picks, dry_picks = drawn[::2], drawn[1::2]
    dry: list[float] = []
    for g in dry_picks:
        q = question(g)
        dry += timed(functools.partial(point.decide, q, m.ResourceStatus.PUBLISHED, TODAY, consume=False), 1)
    cold: list[float] = []
    for g in picks:
        q = question(g)
        cold += timed(functools.partial(point.decide, q, m.ResourceStatus.PUBLISHED, TODAY), 1)
    assert all(point.decide(question(g), m.ResourceStatus.PUBLISHED, TODAY).allowed for g in picks[:50])
    hot_q = question(picks[0])
    repeated = timed(lambda: point.decide(hot_q, m.ResourceStatus.PUBLISHED, TODAY), samples)
    out = {
        "grants": n,
        "build_s": build,
        "dry_p50": pct(dry, 0.5),
        "dry_p99": pct(dry, 0.99),
        "cold_p50": pct(cold, 0.5),
        "cold_p99": pct(cold, 0.99),
        "hot_p50": pct(repeated, 0.5),
        "hot_p99": pct(repeated, 0.99),
        "cold_mean": statistics.fmean(cold),
    }
    return out | (plain_enforce(all_grants, picks, samples) if plain else {})


def plain_enforce(all_grants: list[m.Grant], picks: list[m.Grant], samples: int) -> dict[str, float]:
    """Latency of one pycasbin enforcer holding every grant line (slow: minutes at 100,000 grants)."""
    n = len(all_grants)
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "plain.conf"
        model.write_text(PLAIN_MODEL)
        plain = casbin.Enforcer(str(model))
        plain.add_policies([[s, g.resource_code, g.purpose, g.id] for g in all_grants for s in g.system_codes])
    plain_samples = picks[: max(20, min(samples, 200_000 // max(1, n // 100)))]
    enforce: list[float] = []
    for g in plain_samples:
        enforce += timed(functools.partial(plain.enforce, g.system_codes[0], g.resource_code, g.purpose), 1)
    return {"plain_p50": pct(enforce, 0.5), "plain_p99": pct(enforce, 0.99), "plain_n": len(enforce)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--no-freeze", action="store_true", help="leave the grants under the garbage collector")
    parser.add_argument("--no-plain", action="store_true", help="skip the one-enforcer comparison (minutes)")
    options = parser.parse_args()
    print("grants   build s  dry p50  dry p99  cold p50  cold p99  repeat p50  repeat p99  (µs)", end="")
    print("" if options.no_plain else "  plain p50  plain p99  plain/cold p99")
    for n in options.sizes:
        r = run(n, options.samples, freeze=not options.no_freeze, plain=not options.no_plain)
        gc.unfreeze()
        print(
            f"{r['grants']:>7}  {r['build_s']:>7.2f}  {r['dry_p50']:>7.1f}  {r['dry_p99']:>7.1f}  "
            f"{r['cold_p50']:>8.1f}  {r['cold_p99']:>8.1f}  {r['hot_p50']:>10.1f}  {r['hot_p99']:>10.1f}",
            end="",
        )
        if "plain_p99" in r:
            print(
                f"        {r['plain_p50']:>9.1f}  {r['plain_p99']:>9.1f}  {r['plain_p99'] / r['cold_p99']:>8.0f}x"
                f"   (plain on {r['plain_n']} samples)",
                end="",
            )
        print()


if __name__ == "__main__":
    main()
