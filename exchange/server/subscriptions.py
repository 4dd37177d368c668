"""SubscriptionService handlers: who is calling, what they ask, then the subscription services; errors as statuses.

Follow is an async generator: gRPC asks for the next message once the previous one is on its way, so a slow
follower is sent nothing it has not room for; the changes wait in the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc

from exchange import wire as c
from exchange.errors import ExchangeError
from exchange.models import Principal
from exchange.server.refusals import is_refusal
from exchange.server.rpc import (
    Authenticator,
    Refusals,
    abort_with,
    caller_of,
    internal_error,
    peer_of,
    principal_of,
    unary,
)
from exchange.services.exchange.answers import Ask
from exchange.services.subscriptions import Creation, Delivery, Follower, Gap, Part, SubscriptionService
from exchange.store.subscriptions import Subscription, SubscriptionStatus
from exchange.v1 import data_pb2
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import subscription_pb2 as pb
from exchange.v1 import subscription_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]
STATUS = c.EnumMap(SubscriptionStatus, pb.SubscriptionStatus, "SUBSCRIPTION_STATUS_")
KIND = {"upsert": pb.CHANGE_KIND_UPSERT, "delete": pb.CHANGE_KIND_DELETE}


def subscription_to_wire(s: Subscription) -> pb.Subscription:
    return pb.Subscription(
        id=s.id,
        resource_code=s.resource_code,
        owner_department_code=s.owner_department,
        consumer_department_code=s.consumer_department,
        consumer_system_code=s.consumer_system,
        purpose=s.purpose,
        filters=s.filters,
        fields=list(s.fields),
        grant_id=s.grant_id,
        status=STATUS.wire(s.status),
        acknowledged_sequence=s.acknowledged_sequence,
        delivered_sequence=s.delivered_sequence,
        last_sequence=s.next_sequence - 1,
        pending=s.pending,
        oldest_pending_time=c.timestamp(s.oldest_pending_at),
        dropped_through=s.dropped_through,
        created_by=s.created_by,
        create_time=c.timestamp(s.created_at),
        cancel_time=c.timestamp(s.cancelled_at),
    )


def part_to_wire(part: Part) -> pb.FollowResponse:
    if isinstance(part, Gap):
        gap = pb.ChangeGap(first_sequence=part.first, last_sequence=part.last, message=part.message)
        return pb.FollowResponse(gap=gap)
    return pb.FollowResponse(batch=_batch(part))


def _batch(d: Delivery) -> pb.ChangeBatch:
    changes = [
        pb.SubscriptionChange(
            sequence=x.sequence,
            change_id=x.change_id,
            kind=KIND.get(x.kind, pb.CHANGE_KIND_UNSPECIFIED),
            record=data_pb2.Record.FromString(x.payload),
        )
        for x in d.changes
    ]
    disclosure = xpb.Disclosure(fields=list(d.fields), masks={f: k.value for f, k in d.masks}, grant_id=d.grant_id)
    return pb.ChangeBatch(
        exchange_id=d.exchange_id,
        first_sequence=d.changes[0].sequence,
        last_sequence=d.changes[-1].sequence,
        changes=changes,
        disclosure=disclosure,
    )


def _creation(request: pb.CreateSubscriptionRequest) -> Creation:
    filters = {k.strip(): v.strip() for k, v in request.filters.items()}
    ask = Ask(request.resource_code.strip(), request.purpose.strip(), filters, tuple(f.strip() for f in request.fields))
    return Creation(ask, from_first=request.start == pb.SUBSCRIPTION_START_FIRST)


class SubscriptionServicer(pb_grpc.SubscriptionServiceServicer):
    def __init__(
        self,
        service: SubscriptionService,
        follower: Follower,
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
    ) -> None:
        self.service = service
        self.follower = follower
        self.auth = auth
        self.insecure_dev = insecure_dev
        self.refusals = refusals

    async def CreateSubscription(
        self, request: pb.CreateSubscriptionRequest, context: Context
    ) -> pb.CreateSubscriptionResponse:
        actor = await caller_of(self, context)
        try:
            created = await self.service.create(actor, _creation(request))
        except ExchangeError as e:
            await self._refused(actor, e, "CreateSubscription")
            await abort_with(context, e)
            raise
        except Exception:
            await internal_error(context, "CreateSubscription")
            raise
        return pb.CreateSubscriptionResponse(subscription=subscription_to_wire(created))

    async def _refused(self, actor: Principal, error: ExchangeError, method: str) -> None:
        if is_refusal(error) and self.refusals is not None:
            error.recorded_as(await self.refusals.refused(actor, f"SubscriptionServicer.{method}", error))

    @unary
    def GetSubscription(self, request: pb.GetSubscriptionRequest, actor: Principal) -> pb.GetSubscriptionResponse:
        return pb.GetSubscriptionResponse(
            subscription=subscription_to_wire(self.service.get(actor, request.id.strip()))
        )

    @unary
    def ListSubscriptions(self, request: pb.ListSubscriptionsRequest, actor: Principal) -> pb.ListSubscriptionsResponse:
        page = self.service.list(
            actor, request.page_size, request.page_token, request.resource_code.strip(), request.include_cancelled
        )
        return pb.ListSubscriptionsResponse(
            subscriptions=[subscription_to_wire(s) for s in page.items], next_page_token=page.next_page_token
        )

    @unary
    def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, actor: Principal
    ) -> pb.CancelSubscriptionResponse:
        cancelled = self.service.cancel(actor, request.id.strip(), request.reason.strip())
        return pb.CancelSubscriptionResponse(subscription=subscription_to_wire(cancelled))

    @unary
    def Acknowledge(self, request: pb.AcknowledgeRequest, actor: Principal) -> pb.AcknowledgeResponse:
        sub = self.follower.acknowledge(actor, request.id.strip(), request.sequence)
        return pb.AcknowledgeResponse(acknowledged_sequence=sub.acknowledged_sequence, pending=sub.pending)

    async def Follow(self, request: pb.FollowRequest, context: Context) -> AsyncIterator[pb.FollowResponse]:
        actor = await caller_of(self, context)
        identify = partial(principal_of, self, peer_of(self, context))
        parts = self.follower.follow(identify, request.id.strip(), max(0, request.batch_size))
        try:
            async for part in parts:
                yield part_to_wire(part)
        except ExchangeError as e:
            if not e.exchange_id:  # a refusal before any batch: recorded here (the follower records the rest)
                await self._refused(actor, e, "Follow")
            await abort_with(context, e)
        except Exception:
            await internal_error(context, "Follow")
        finally:
            await parts.aclose()
