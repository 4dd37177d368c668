"""A subscription behind its source catches up without waiting a poll interval per page: a round in which a source
filled a whole page is followed at once by the next, and only a round that took less waits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exchange.v1 import subscription_pb2 as spb
from tests.exchange_world import PERSON_ID
from tests.harness import base_settings, running_hub
from tests.subscription_world import read, sequences, subscribing

CHANGES = 6


def test_a_subscription_behind_its_source_takes_page_after_page_without_waiting(tmp_path: Path) -> None:
    # One change a page and a long interval: taking six changes a page per interval would mean five waits.
    settings = base_settings(tmp_path / "hub", subscription_poll_seconds=5, subscription_batch_size=1)
    with running_hub(settings) as hub:
        subs = subscribing(hub, tmp_path)
        sub = subs.subscribe()
        poller = hub.hub.poller
        assert poller is not None
        waits = poller.waits
        for n in range(CHANGES):
            subs.source.change(f"名{n}", PERSON_ID)
        stream: Any = subs.stub().Follow(spb.FollowRequest(id=sub.id), timeout=120)
        try:
            assert sequences(read(stream, CHANGES)) == list(range(1, CHANGES + 1))
        finally:
            stream.cancel()
        # The round under way when the changes came may have ended in a wait (it saw none or a partial log), and
        # the round that took the last page waits once the source has no more; never a wait between full pages.
        assert poller.waits - waits <= 2, f"{poller.waits - waits} waits for {CHANGES} pages"
        # Once caught up, the poller waits its interval again instead of asking the source without pause.
        waited = poller.waits
        deadline = time.monotonic() + 60
        while poller.waits == waited and time.monotonic() < deadline:
            time.sleep(0.1)
        assert poller.waits > waited
