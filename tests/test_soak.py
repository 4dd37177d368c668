"""Soak (long; `pytest -m long`): a fixed rate of audited exchanges through a hub in its own process.

Runs bench/soak.py for EXCHANGE_SOAK_SECONDS (default 600) at EXCHANGE_SOAK_RATE calls a second (default
100): no call may fail, the hub's resident memory after the warm-up may not grow beyond the bench's
allowance, and every exchange acknowledged to the consumer must be in the verified audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.long
def test_a_fixed_rate_holds_without_errors_leaks_or_unaudited_exchanges(tmp_path: Path) -> None:
    seconds = float(os.environ.get("EXCHANGE_SOAK_SECONDS", "600"))
    rate = os.environ.get("EXCHANGE_SOAK_RATE", "100")
    out = tmp_path / "soak.json"
    command = [sys.executable, str(PROJECT / "bench" / "soak.py"), "--seconds", str(seconds), "--rate", rate]
    finished = subprocess.run(
        [*command, "--out", str(out)],
        check=False,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=seconds * 3 + 600,
    )
    print(finished.stdout)
    assert out.exists(), f"the soak did not finish (status {finished.returncode}):\n{finished.stderr[-3000:]}"
    result = json.loads(out.read_text())
    totals, memory, audit = result["totals"], result["memory"], result["audit"]
    assert result["failure"] == ""
    assert totals["errors"] == {}, totals["errors"]
    assert totals["ok"] == totals["calls"] > 0
    assert memory["bounded"], f"the hub's RSS grew {memory['growth_mib']} MiB after the warm-up: {result['verdict']}"
    assert audit["verified"], audit["problem"]
    assert audit["missing"] == 0, f"{audit['missing']} acknowledged exchanges are not in the log"
    assert audit["unacknowledged"] == 0
    assert audit["answered"] == audit["acknowledged"] == totals["ok"] + 1  # and the call that opened the channel
    assert result["passed"] and finished.returncode == 0, result["verdict"]
