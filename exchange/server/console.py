"""ConsoleService handlers: a one-time sign-in link to the web console, asked for with a hub certificate."""

from __future__ import annotations

from collections.abc import Callable

from exchange import errors
from exchange import wire as c
from exchange.config import Settings
from exchange.models import Principal
from exchange.server.rpc import Authenticator, Refusals, unary
from exchange.services.console import ConsoleAccess
from exchange.v1 import console_pb2 as pb
from exchange.v1 import console_pb2_grpc as pb_grpc

# Where on the console a link's secret is opened; the console serves this path.
LINK_PATH = "/signin/link/"


def console_base_url(settings: Settings, bound_port: int = 0) -> str:
    """The console's address as browsers reach it (no trailing slash); "" when the hub serves no console.

    Without console_url it is console_listen's host with the port the console bound (console_listen may say 0).
    """
    if not settings.console_listen:
        return ""
    if settings.console_url:
        return settings.console_url.rstrip("/")
    host, _, port = settings.console_listen.rpartition(":")
    return f"https://{host}:{bound_port or port}"


class ConsoleServicer(pb_grpc.ConsoleServiceServicer):
    def __init__(
        self,
        access: ConsoleAccess,
        base_url: Callable[[], str],
        auth: Authenticator,
        insecure_dev: bool,
        refusals: Refusals | None = None,
    ) -> None:
        self.refusals = refusals
        self.access = access
        # The console's address for links (see console_base_url); empty: this hub serves no console.
        self.base_url = base_url
        self.auth = auth
        self.insecure_dev = insecure_dev

    @unary
    def CreateSignInLink(self, request: pb.CreateSignInLinkRequest, actor: Principal) -> pb.SignInLink:
        base_url = self.base_url()
        if not base_url:
            raise errors.FailedPrecondition(
                "this hub serves no web console: set console_listen", subject="console_listen", kind="NO_CONSOLE"
            )
        secret, expires = self.access.create_link(actor)
        return pb.SignInLink(url=f"{base_url}{LINK_PATH}{secret}", expire_time=c.timestamp(expires))
