"""Subscriptions (issue 16): a consumer system receives each change of a resource under its grant, in order.

``terms`` (the grant checks, catalog entries and backends, from the exchange's pieces), ``manage`` (create,
get, list, cancel), ``poll`` (sources asked for changes into each subscription's window, under a poll
lease), ``follow`` (the window sent to the one follower, each batch audited first; acknowledgements).
"""

from exchange.services.subscriptions.follow import Delivery, Follower, FollowSettings, Gap, Part
from exchange.services.subscriptions.manage import Creation, SubscriptionService
from exchange.services.subscriptions.poll import Poller, PollSettings
from exchange.services.subscriptions.terms import Terms

__all__ = [
    "Creation",
    "Delivery",
    "FollowSettings",
    "Follower",
    "Gap",
    "Part",
    "PollSettings",
    "Poller",
    "SubscriptionService",
    "Terms",
]
