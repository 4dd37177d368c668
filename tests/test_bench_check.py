"""The exchange bench's targets and --check, judged on made-up results (no benchmark is run)."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from bench.exchange_paths import (
    GOALS,
    Outcome,
    PathResult,
    check_status,
    evaluate,
    goals_json,
    goals_table,
    main,
    record,
    report_check,
    table,
)

RATE = 300.0


def passing() -> dict[str, PathResult]:
    """A run in which the hub meets every target, the stretch one too."""
    return {
        "direct": PathResult(rps=2000, open_p99_ms=7.0, stream_mib_s=40.0),
        "proxy": PathResult(rps=1000, open_p99_ms=10.0, stream_mib_s=40.0),
        "hub": PathResult(rps=850, open_p99_ms=14.0, stream_mib_s=36.0, middle_ms_per_call=0.9),
    }


def with_hub(**changes: object) -> dict[str, PathResult]:
    results = passing()
    results["hub"] = dataclasses.replace(results["hub"], **changes)  # type: ignore[arg-type]
    return results


def test_the_table_holds_exactly_the_issues_four_targets() -> None:
    assert [(g.label(RATE), g.threshold, g.at_least, g.stretch) for g in GOALS] == [
        ("hub calls/s", 0.6, True, 0.8),
        ("hub CPU per query", 1.0, False, None),
        ("hub p99 over proxy p99 at 300/s", 5.0, False, None),
        ("hub stream MiB/s", 0.8, True, None),
    ]


def test_a_run_meeting_every_target_exits_zero() -> None:
    verdicts = evaluate(passing())
    assert [round(v.value, 3) for v in verdicts] == [0.85, 0.9, 4.0, 0.9]
    assert all(v.met for v in verdicts)
    assert check_status(passing(), verdicts, RATE) == (0, [])


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"rps": 500.0}, "MISSED hub calls/s: 0.50 x proxy, needs >= 0.60 x proxy; short by 0.10 x proxy"),
        ({"middle_ms_per_call": 2.5}, "MISSED hub CPU per query: 2.50 ms, needs <= 1.00 ms; over by 1.50 ms"),
        (
            {"open_p99_ms": 22.0},
            "MISSED hub p99 over proxy p99 at 300/s: 12.00 ms, needs <= 5.00 ms; over by 7.00 ms",
        ),
        ({"stream_mib_s": 20.0}, "MISSED hub stream MiB/s: 0.50 x proxy, needs >= 0.80 x proxy; short by 0.30 x proxy"),
    ],
)
def test_each_missed_target_exits_one_with_a_line_saying_by_how_much(changes: dict[str, float], line: str) -> None:
    results = with_hub(**changes)
    assert check_status(results, evaluate(results), RATE) == (1, [line])


def test_the_bounds_themselves_pass() -> None:
    results = with_hub(rps=600.0, middle_ms_per_call=1.0, open_p99_ms=15.0, stream_mib_s=32.0)
    assert check_status(results, evaluate(results), RATE) == (0, [])


def test_the_stretch_target_is_shown_but_does_not_fail_the_check() -> None:
    results = with_hub(rps=700.0)  # 0.7 x proxy: over 0.6, under the stretch 0.8
    verdicts = evaluate(results)
    calls = verdicts[0]
    assert (calls.met, calls.stretch_met) == (True, False)
    assert check_status(results, verdicts, RATE) == (0, [])
    assert "| >= 0.80 x proxy (not met) | met |" in goals_table(verdicts, RATE)
    assert goals_json(verdicts, RATE)[0]["stretch_met"] is False


def test_a_target_that_could_not_be_measured_exits_two_not_zero() -> None:
    results = with_hub(middle_ms_per_call=math.nan)  # e.g. no /proc
    verdicts = evaluate(results)
    assert verdicts[1].met is None
    status, reasons = check_status(results, verdicts, RATE)
    assert (status, reasons) == (2, ["hub CPU per query: could not be measured (NaN)"])
    computed = "hub processes' CPU ms (serving + audit integrator) / calls, closed loop"
    assert f"| hub CPU per query | {computed} | — | <= 1.00 ms |  | not measured |" in goals_table(verdicts, RATE)
    cpu = goals_json(verdicts, RATE)[1]
    assert (cpu["value"], cpu["met"], cpu["threshold"]) == (None, None, 1.0)


def test_the_audit_integrator_process_counts_in_the_hubs_cpu_per_query() -> None:
    """Integrating in a process of its own moves CPU, it does not remove it: the target counts both processes."""
    results = with_hub(middle_ms_per_call=0.9, integrator_ms_per_call=0.2)
    verdicts = evaluate(results)
    assert verdicts[1].value == pytest.approx(1.1)
    assert verdicts[1].met is False


def test_a_proxy_without_calls_makes_the_ratios_unmeasured_rather_than_a_crash() -> None:
    results = passing()
    results["proxy"] = dataclasses.replace(results["proxy"], rps=0.0)
    status, reasons = check_status(results, evaluate(results), RATE)
    assert (status, reasons) == (2, ["hub calls/s: could not be measured (NaN)"])


def test_errors_on_a_path_exit_two_even_with_every_target_met() -> None:
    results = passing()
    results["proxy"] = dataclasses.replace(results["proxy"], errors=3, first_error="UNAVAILABLE: gone")
    assert check_status(results, evaluate(results), RATE) == (2, ["proxy: 3 calls failed (first: UNAVAILABLE: gone)"])


def test_errors_outrank_misses_and_both_are_reported() -> None:
    results = with_hub(rps=100.0, errors=1, first_error="DEADLINE_EXCEEDED")
    status, reasons = check_status(results, evaluate(results), RATE)
    assert status == 2
    assert reasons[0] == "hub: 1 calls failed (first: DEADLINE_EXCEEDED)"
    assert reasons[1].startswith("MISSED hub calls/s: 0.10 x proxy")


def test_a_missing_path_exits_two() -> None:
    results = passing()
    del results["proxy"]
    assert evaluate(results) == []
    assert check_status(results, [], RATE) == (2, ["proxy: not measured"])


def test_report_check_prints_each_reason_and_returns_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    results = with_hub(stream_mib_s=10.0)
    assert report_check(*check_status(results, evaluate(results), RATE)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "check: MISSED hub stream MiB/s: 0.25 x proxy, needs >= 0.80 x proxy; short by 0.55 x proxy",
        "check: a target was missed (exit 1)",
    ]


def test_the_json_targets_carry_value_threshold_and_met() -> None:
    entries = goals_json(evaluate(with_hub(open_p99_ms=30.0)), RATE)
    assert entries[2] == {
        "target": "hub p99 over proxy p99 at 300/s",
        "how": "hub p99 - proxy p99, open loop",
        "unit": "ms",
        "value": 20.0,
        "threshold": 5.0,
        "at_least": False,
        "met": False,
        "stretch": None,
        "stretch_met": None,
    }


@pytest.mark.parametrize("paths", ["hub,proxy", "direct,hub", "hub"])
def test_check_refuses_a_run_without_all_three_paths(paths: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--check", "--paths", paths])
    assert raised.value.code == 2
    assert "--check compares the hub with the proxy in one run: it needs all of --paths direct,proxy,hub" in (
        capsys.readouterr().err
    )


def test_open_loop_tails_per_path_p50_p99_p999_and_max() -> None:
    result = PathResult()
    latencies = [float(n) for n in range(1, 2001)]  # 2,000 calls: 1 ms .. 2,000 ms
    record(result, "open", Outcome(calls=2000, elapsed=2.0, latencies_ms=latencies[::-1]), {})
    assert (result.open_p50_ms, result.open_p99_ms, result.open_p999_ms, result.open_max_ms) == (
        1000.0,
        1980.0,
        1998.0,
        2000.0,
    )
    assert result.open_rate == 1000.0


def test_the_cpu_stolen_by_the_host_is_the_worst_of_a_paths_measurements_and_shown() -> None:
    """A run on an oversubscribed host says so: each path keeps the highest steal share of its measurements."""
    result = PathResult()
    for kind, steal in (("closed", 0.02), ("open", 0.31), ("stream", 0.1)):
        record(result, kind, Outcome(calls=10, elapsed=1.0, latencies_ms=[1.0] * 10), {"steal": steal})
    assert result.steal_share == pytest.approx(0.31)
    shown = table({"hub": result}, argparse.Namespace(concurrency=64, rate=300.0))
    assert "CPU stolen by the host" in shown and "| 31% |" in shown
