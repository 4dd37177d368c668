"""The federation listener and the calls this hub makes to its peers.

Peer hubs call ``PeeringService`` on a port of its own (``federation_listen``), whose client roots are the
CAs of registered peers only: hub certificates never reach the departments' services and department
certificates never reach the federation's. This hub calls its peers over channels that present its hub
certificate and trust each peer's registered CA only, with a deadline per call; a peer that is down or slow
is UNAVAILABLE naming the hop. A loop pulls each active peer's offered catalog entries every
``federation_sync_seconds``, has each cosign this hub's newest checkpoint (``federation_witness``) and
retries introductions still waiting for the other side. The listener also serves the peers' witness
(``WitnessService``) and their parts of cross-hub receipts (``ReceiptService``, ``receipts``).

Several hub processes may share the store and the listener's port (``exchange serve --workers N``): each
serves the listener and makes its own calls, but the sync rounds' jobs run in one process at a time, the
holder of the federation's sync lock (``exchange.store.session_lock``). Every process still turns its loop:
it re-reads the peers each round (a peering changed in another process reaches it by a notice at once, by the
round at the latest) and, asked for a round it cannot run, asks the holder by a notice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TypeVar

import grpc
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from audit.note import Signer, Verifier
from exchange import errors, pki
from exchange.bootstrap import load_witness_key
from exchange.config import Settings
from exchange.federation.model import HubKeys, HubRef, Offer, Peer, PeerState
from exchange.federation.tls import HubCertificate, PeerTrust, channel_to, watch_hub_certificate
from exchange.server import federation_wire as fw
from exchange.server.cross_rights import CrossHubClient, CrossHubRightsServicer
from exchange.server.federation_witness import ForkCounter, Submission, Witnessing
from exchange.server.forwarding import ForwardingServicer
from exchange.server.methods import MethodTable
from exchange.server.peering import PeeringServicer
from exchange.server.receipts import InclusionProofs, Parts, ReceiptServicer
from exchange.server.rpc import reason_of
from exchange.services.catalog import CatalogService
from exchange.services.federation.catalog import FederatedCatalog
from exchange.services.federation.forwarding import Forwarding
from exchange.services.federation.held import HeldEntries
from exchange.services.federation.peering import PeeringService
from exchange.services.federation.rights import CrossHubRights
from exchange.services.rights import RightsService
from exchange.store import Store
from exchange.store.session_lock import SessionLock, Solo, session_lock
from exchange.v1 import applications_pb2_grpc as apb_grpc
from exchange.v1 import federation_pb2 as pb
from exchange.v1 import federation_pb2_grpc as pb_grpc
from exchange.v1 import forwarding_pb2_grpc
from exchange.v1 import receipts_pb2_grpc as rpb_grpc
from exchange.v1 import witness_pb2_grpc as wpb_grpc
from exchange.watched import Watched
from policy import RightsPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")
PAGE = 200
# An arbitrary constant naming the PostgreSQL advisory lock whose holder runs the federation's sync rounds.
SYNC_LOCK = 0x45584645  # "EXFE"
_CHANGES = {
    "suspended": pb.PEERING_CHANGE_SUSPENDED,
    "resumed": pb.PEERING_CHANGE_RESUMED,
    "ended": pb.PEERING_CHANGE_ENDED,
}


class Federation:
    """This hub's federation: its listener, its channels to peers, and the catalog sync loop."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: Watched[HubCertificate],
        peering: PeeringService,
        catalog: FederatedCatalog,
        *,
        witnessing: Witnessing | None = None,
        parts: Parts | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.peering = peering
        self.catalog = catalog
        self.trust = PeerTrust(hub)
        # Held by the one process of the hub that runs the sync rounds (always held on SQLite: one process).
        self.lock = session_lock(store.db.url, store.db.backend, SYNC_LOCK, "federation's sync lock")
        # The hub's witness of its peers' logs, and its own log's submissions to theirs (None: not witnessing).
        self.witnessing = witnessing
        # This hub's parts of cross-hub receipts, for peers that were party to an exchange (None: not served).
        self.parts = parts
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._channels: dict[str, tuple[tuple[str, str, bytes], grpc.aio.Channel]] = {}
        self._dropped: set[grpc.aio.Channel] = set()  # channels dropped after a failure, closed a little later
        self._closing: set[asyncio.Task[None]] = set()  # their closing, held so that no task is lost
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._syncing = self._asked = False
        self._forward = False  # a round asked in this process: if another holds the lock, ask it by a notice
        self.applications: CrossHubClient | None = None  # share requests across hubs, once rights are served
        # Serves the exchanges peers forward here (set by the hub once its exchange service is built).
        self.forwarding: Forwarding | None = None

    @property
    def hub(self) -> HubCertificate:
        """The hub certificate presented now (re-read once its files change)."""
        return self.trust.hub

    def serve_rights(self, rights: RightsService, signer: Signer) -> None:
        """Applications across hubs: this hub's go to their home hubs, its peers' are received here."""
        cross = CrossHubRights(self.store, rights, self.peering.own)
        cross.wake = self.sync_soon
        rights.forward_through(cross)
        self.applications = CrossHubClient(self, cross, signer)

    async def start(self) -> int:
        """Serves the federation listener and starts the sync loop; returns the bound port."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.peers_changed)
        # Every worker of ``serve --workers N`` serves the listener on the same port, as the main one; one
        # accept pending, not one per method (exchange.server.methods).
        options = [*self._limits(), ("grpc.so_reuseport", int(self.settings.workers > 1))]
        server = MethodTable(grpc.aio.server(options=options))
        pb_grpc.add_PeeringServiceServicer_to_server(PeeringServicer(self), server)
        if self.witnessing is not None:
            wpb_grpc.add_WitnessServiceServicer_to_server(self.witnessing.servicer(self), server)
        if self.parts is not None:
            rpb_grpc.add_ReceiptServiceServicer_to_server(ReceiptServicer(self, self.parts), server)
        if self.applications is not None:
            apb_grpc.add_CrossHubRightsServiceServicer_to_server(
                CrossHubRightsServicer(self, self.applications), server
            )
        forwarding_pb2_grpc.add_ForwardingServiceServicer_to_server(ForwardingServicer(self), server)
        try:
            self.port = server.add_secure_port(self.settings.federation_listen, self.trust.credentials())
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise errors.ConfigError(f"cannot listen on federation_listen {self.settings.federation_listen}")
        await server.start()
        self._server = server
        self._task = self._loop.create_task(self._sync_forever())
        log.info("federation listener for hub %s on port %d", self.hub.code, self.port)
        return self.port

    def _limits(self) -> list[tuple[str, int]]:
        size = self.settings.max_message_bytes
        return [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._server is not None:
            await self._server.stop(1)
        for channel in [*(held for _, held in self._channels.values()), *self._dropped]:
            await channel.close(None)
        self._channels.clear()
        self._dropped.clear()
        await asyncio.to_thread(self.lock.release)  # another process takes the rounds over at its next one

    def peers_changed(self) -> None:
        """Re-reads the peers for the listener's trust (blocking: reads the store), and has the peers held for
        calls read again (a change another process made, heard by its notice or at a round)."""
        self.peering.held.forget()
        self.trust.update(self.store.peers.list())

    def run(self, work: Awaitable[T]) -> T:
        """Runs a call to a peer on the hub's loop from a worker thread (an operator's RPC), waiting for it."""
        assert self._loop is not None
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)  # type: ignore[arg-type]
        return future.result(self.settings.federation_call_seconds + 5)

    @property
    def idle(self) -> bool:
        """No sync round is running or asked for (for tests and a clean stop to wait on)."""
        return not self._syncing and not self._asked

    def sync_soon(self) -> None:
        """Starts the next sync round now (after a peering became active, an application was made), from any
        thread; when another process holds the sync lock, that one is asked."""
        self._forward = True
        self.heard_sync()

    def heard_sync(self) -> None:
        """Starts the next sync round now, for another process that asked (not passed on again)."""
        if self._loop is not None:
            self._asked = True  # at once, from the asking thread: ``idle`` is false until the round has run
            self._loop.call_soon_threadsafe(self._wake.set)

    def _stub(self, peer: Peer) -> pb_grpc.PeeringServiceAsyncStub:
        """The stub for a peer (the generated stub class serves sync and asyncio channels alike; its type
        stubs name the asyncio flavour apart)."""
        return pb_grpc.PeeringServiceStub(self.channel(peer))

    def channel(self, peer: Peer) -> grpc.aio.Channel:
        """The channel to a peer, kept while its address, its CA and this hub's certificate stay (for any
        hub-facing service). One that no longer fits is dropped as after a failure: calls on it finish."""
        hub = self.hub
        key = (peer.address, peer.ca_fingerprint, hub.cert)
        held = self._channels.get(peer.code)
        if held is None or held[0] != key:
            if held is not None:
                self._drop_now(peer.code)
            held = (key, channel_to(peer, hub, self._limits()))
            self._channels[peer.code] = held
        return held[1]

    async def call(
        self, peer: Peer, what: str, rpc: Callable[[pb_grpc.PeeringServiceAsyncStub, float], Awaitable[T]]
    ) -> T:
        """One call to a peer, with its deadline; a hub error naming the peer hop if it fails."""
        return await self.call_on(peer, what, lambda _: self._stub(peer), rpc)

    async def call_on(
        self,
        peer: Peer,
        what: str,
        stub: Callable[[grpc.aio.Channel], S],
        rpc: Callable[[S, float], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """One call to a peer on a stub of any service ``stub`` makes of the peer's channel, as ``call``; within
        ``timeout`` seconds if given (less than ``federation_call_seconds``: what the asker has left), else those."""
        seconds = self.settings.federation_call_seconds if timeout is None else timeout
        return await self.call_over(peer, what, lambda channel: rpc(stub(channel), seconds), seconds)

    async def call_over(
        self, peer: Peer, what: str, rpc: Callable[[grpc.aio.Channel], Awaitable[T]], timeout: float | None = None
    ) -> T:
        """One call to a peer on the channel to it (the caller makes the stub and sets the deadline), its
        failures named as ``call``'s."""
        try:
            return await rpc(self.channel(peer))
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await self._drop(peer.code)  # the next call connects afresh, not after the channel's back-off
            raise _hop_error(peer, what, e, timeout or self.settings.federation_call_seconds) from None

    async def stream_on(
        self, peer: Peer, what: str, rpc: Callable[[grpc.aio.Channel], AsyncIterator[T]], timeout: float
    ) -> AsyncIterator[T]:
        """A streaming call to a peer: its messages as they come, its failures named as ``call``'s."""
        try:
            async for message in rpc(self.channel(peer)):
                yield message
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await self._drop(peer.code)
            raise _hop_error(peer, what, e, timeout) from None

    async def _drop(self, code: str) -> None:
        """Forgets the channel to a peer, so that the next call connects afresh. Other calls may be on it, or
        about to start on it (they took it before this one failed): it is closed only once they had the time a
        forwarded call may take, never under them (closing it at once cut them short, or left them hanging
        until the consumer's deadline)."""
        self._drop_now(code)

    def _drop_now(self, code: str) -> None:
        held = self._channels.pop(code, None)
        if held is not None:
            self._dropped.add(held[1])
            asyncio.get_running_loop().call_later(self._grace, self._close_dropped, held[1])

    @property
    def _grace(self) -> float:
        """The longest a forwarded unary call waits for its answer."""
        return self.settings.federation_call_seconds + self.settings.provider_timeout_seconds

    def _close_dropped(self, channel: grpc.aio.Channel) -> None:
        if channel in self._dropped:
            self._dropped.discard(channel)
            task = asyncio.get_running_loop().create_task(channel.close(self._grace))  # a stream's last chance
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def introduce(self, peer: Peer) -> Peer:
        """Tells a registered peer that this hub registered it; active once the peer registered this hub too."""
        own = self.peering.own
        keys = self.peering.keys
        request = pb.IntroduceRequest(
            name=own.name,
            level=own.level,
            relation=fw.RELATION.wire(peer.relation),
            log_key=keys.log_key,
            witness_key=keys.witness_key,
        )

        async def rpc(stub: pb_grpc.PeeringServiceAsyncStub, timeout: float) -> pb.IntroduceResponse:
            return await stub.Introduce(request, timeout=timeout)

        answer = await self.call(peer, "introduce", rpc)
        if answer.code != peer.code:
            raise errors.FailedPrecondition(f"the hub at {peer.address} says it is hub {answer.code}, not {peer.code}")
        theirs = fw.STATE.domain(answer.state, "state", [], required=False) or PeerState.REGISTERED
        told = HubKeys(answer.log_key, answer.witness_key)
        return await asyncio.to_thread(self.peering.confirmed, peer.code, theirs, told)

    async def tell(self, peer: Peer, change: str, reason: str) -> bool:
        """Tells a peer of a suspension, resumption or end; False (logged) when it could not be told now."""
        request = pb.NotifyPeeringRequest(change=_CHANGES[change], reason=reason)

        async def rpc(stub: pb_grpc.PeeringServiceAsyncStub, timeout: float) -> pb.NotifyPeeringResponse:
            return await stub.NotifyPeering(request, timeout=timeout)

        try:
            await self.call(peer, "notify", rpc)
        except errors.ExchangeError as e:
            log.warning("federation: hub %s was not told the peering was %s: %s", peer.code, change, e.message)
            return False
        return True

    async def pull(self, peer: Peer) -> list[str]:
        """Fetches the peer's offers after the last one stored, page by page, keeping what it may offer."""
        refused: list[str] = []
        after = peer.offer_sequence
        while True:
            page = await self.call(peer, "list offered entries", _list_after(after))
            if not all(e.sequence > after for e in page.entries):
                raise errors.FailedPrecondition(f"hub {peer.code} offered entries out of sequence (after {after})")
            cursor = max((e.sequence for e in page.entries), default=page.last_sequence)
            offers, malformed = readable_offers(page)
            refused += await asyncio.to_thread(self.catalog.accept, peer, offers, max(cursor, after), malformed)
            if not page.entries or cursor >= page.last_sequence:
                return refused
            after = cursor

    async def sync_once(self) -> None:
        """One round: introductions still waiting, then the offers of every active peer and its cosignature of
        this hub's newest checkpoint."""
        peers = await asyncio.to_thread(self.store.peers.list, (PeerState.REGISTERED, PeerState.ACTIVE))
        await asyncio.to_thread(self.peers_changed)  # also catches changes other hub processes made
        for registered in peers:
            if not await self._holding():
                return
            peer = registered
            try:
                if peer.state is PeerState.REGISTERED:
                    peer = await self.introduce(peer)
                if peer.state is PeerState.ACTIVE:
                    await self.pull(peer)
            except errors.PermissionDenied as e:
                if e.reason == "PEERING_SUSPENDED_BY_CALLER" and peer.state is PeerState.ACTIVE:
                    await self.tell(peer, "resumed", "resumed here; told again")  # the first word was lost
                await self._failed(peer, e)
            except errors.ExchangeError as e:
                await self._failed(peer, e)
            if peer.state is PeerState.ACTIVE:
                await self._witnessed(peer)
        if self.applications is not None and await self._holding():
            await self.applications.sync()

    async def _holding(self) -> bool:
        """Whether this process still holds the sync lock (a process that lost it leaves the round)."""
        return await asyncio.to_thread(self.lock.held)

    async def _round(self, forward: bool) -> None:
        """The loop's turn: the sync round if this process holds the sync lock; otherwise the peers re-read,
        and a round asked here (``forward``) asked of the holder."""
        if await self._holding():
            await self.sync_once()
            return
        await asyncio.to_thread(self.peers_changed)  # a notice missed (a listener reconnecting) is made up here
        if forward:
            await asyncio.to_thread(self.store.peers.ask_sync)

    async def _witnessed(self, peer: Peer) -> None:
        """Has the peer cosign this hub's newest checkpoint (whatever became of the pull: it is another matter)."""
        if self.witnessing is None:
            return
        try:
            await self.witnessing.submission.submit(self, peer)
        except errors.ExchangeError as e:
            await self._failed(peer, e)

    async def _failed(self, peer: Peer, e: errors.ExchangeError) -> None:
        log.warning("federation: sync with hub %s: %s", peer.code, e.message)
        await asyncio.to_thread(self.store.peers.sync_failed, peer.code, e.message)

    async def _sync_forever(self) -> None:
        while True:
            self._wake.clear()  # before the round: a wake-up asked during it makes another round at once
            self._syncing, self._asked = True, False
            forward, self._forward = self._forward, False
            try:
                await self._round(forward)
            except Exception:  # the loop must outlive one bad round (the store down); the next round retries
                log.exception("federation: a sync round failed")
            finally:
                self._syncing = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.federation_sync_seconds)


class SyncHolder(Collector):
    """exchange_federation_sync_holder: 1 in the process that holds the federation's sync lock, 0 in the others.

    As of each process's last try at the lock (every round, within ``federation_sync_seconds``): a scrape makes
    no round trip. Summed over a hub's processes it is 1; 0 for long means no process runs the sync rounds.
    """

    def __init__(self, lock: SessionLock | Solo) -> None:
        self.lock = lock

    def collect(self) -> Iterable[Metric]:
        holder = GaugeMetricFamily(
            "exchange_federation_sync_holder",
            "1 in the process of this hub that holds the federation's sync lock (runs the sync rounds), 0 in "
            "the others, as of its last try at the lock.",
        )
        holder.add_metric([], 1.0 if self.lock.holding else 0.0)
        yield holder


def _list_after(
    after: int,
) -> Callable[[pb_grpc.PeeringServiceAsyncStub, float], Awaitable[pb.ListOfferedEntriesResponse]]:
    request = pb.ListOfferedEntriesRequest(after_sequence=after, page_size=PAGE)

    async def rpc(stub: pb_grpc.PeeringServiceAsyncStub, timeout: float) -> pb.ListOfferedEntriesResponse:
        return await stub.ListOfferedEntries(request, timeout=timeout)

    return rpc


def readable_offers(page: pb.ListOfferedEntriesResponse) -> tuple[list[Offer], list[str]]:
    """The page's offers that can be read, and a refusal for each that cannot."""
    offers: list[Offer] = []
    malformed: list[str] = []
    for entry in page.entries:
        try:
            offers.append(fw.offer_from_wire(entry))
        except errors.ExchangeError as e:
            malformed.append(f"entry {entry.resource.code[:40]!r} (offer {entry.sequence}): malformed: {e.message}")
    return offers, malformed


def _hop_error(peer: Peer, what: str, e: grpc.aio.AioRpcError, timeout: float) -> errors.ExchangeError:
    """The hub error for a failed call to a peer: it names the hop (the peer's code and address)."""
    hop = f"peer hub {peer.code} at {peer.address}"
    detail = e.details() or e.code().name
    code = e.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"{hop} did not answer {what} within {timeout:g}s")
    if code is grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(
            f"{hop} cannot be reached for {what} ({detail}); it may be down, or not have registered this hub yet"
        )
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(f"{hop} refused {what}: {detail}", reason=reason_of(e) or "PEER_REFUSED")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(f"{hop} did not accept this hub's certificate for {what}: {detail}")
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(f"{hop} refused {what}: {detail}", subject=peer.code)
    return _forwarded_error(hop, what, e) or errors.Unavailable(f"{hop} failed {what}: {code.name}: {detail}")


def _forwarded_error(hop: str, what: str, e: grpc.aio.AioRpcError) -> errors.ExchangeError | None:
    """The refusals a forwarded exchange may come back with, kept as the hub further on gave them."""
    code, detail = e.code(), e.details() or e.code().name
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidArgument(f"{hop} refused {what}: {detail}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(f"{hop} refused {what}: {detail}", reason_of(e) or "PEER_REFUSED")
    if code is grpc.StatusCode.NOT_FOUND:
        return errors.FailedPrecondition(f"{hop} refused {what}: {detail}", kind="NOT_FOUND_THERE")
    if code is grpc.StatusCode.DATA_LOSS:
        return errors.DataLoss(f"{hop} refused {what}: {detail}")
    return None


def build(
    settings: Settings,
    store: Store,
    policy: RightsPolicy,
    catalog: CatalogService,
    *,
    proofs: InclusionProofs | None = None,
    forks: ForkCounter | None = None,
) -> tuple[FederatedCatalog, PeeringService, Federation | None]:
    """The federated catalog and the peerings (always: a hub that does not federate still lists its own entries
    and reads its peers) and, when ``federation_listen`` is set, the federation with its listener (not started);
    with the log's ``proofs``, it witnesses its peers and has them witness its log."""
    own = HubRef(settings.hub_code, settings.hub_name, settings.hub_level)
    files = pki.HubFiles(settings.home, settings.ca_key_file)
    keys = _keys(settings, files)
    # Its own entries are offered with its log key: hubs on the way check its answers to forwarded exchanges.
    entries = HeldEntries(store)  # one copy for the sync rounds that change them and the exchanges that read them
    federated = FederatedCatalog(store, catalog, replace(own, log_key=keys.log_key), entries=entries)
    peering = PeeringService(store, policy, own, files.ca_cert.read_text(), keys, entries=entries)
    if not settings.federation_listen:
        return federated, peering, None
    hub = watch_hub_certificate(files, settings.hub_code)
    if proofs is None:
        return federated, peering, Federation(settings, store, hub, peering, federated)
    witnessing = Witnessing(load_witness_key(settings), Submission(store, proofs, forks), forks)
    parts = Parts(store, proofs, Verifier.parse(files.audit_verifier.read_text()))
    return federated, peering, Federation(settings, store, hub, peering, federated, witnessing=witnessing, parts=parts)


def _keys(settings: Settings, files: pki.HubFiles) -> HubKeys:
    """The keys this hub tells its peers when it introduces itself (none for a hub that does not federate)."""
    if not settings.hub_code:
        return HubKeys("", "")
    return HubKeys(files.audit_verifier.read_text().strip(), load_witness_key(settings).verifier().encode())
