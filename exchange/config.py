"""The hub's configuration: defaults, then a TOML file, then ``EXCHANGE_*`` variables.

This is the only module that reads configuration. Every setting is checked
when loaded, and a bad one stops the program with a message naming the
setting, where it came from, and what is wrong.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from exchange.errors import ConfigError

ENV_PREFIX = "EXCHANGE_"
DEFAULT_FILE = Path("exchange.toml")


@dataclass(frozen=True)
class Settings:
    """All settings, with their defaults. Paths are relative to the working directory."""

    # Where the hub keeps its certificate authority, server key and, by default, its database.
    home: Path = Path("var/hub")
    # SQLAlchemy URL; empty means a SQLite file in `home`. PostgreSQL: postgresql+psycopg://host/db
    database_url: str = ""
    # host:port the server listens on (mutual TLS).
    listen: str = "127.0.0.1:7443"
    # Names the server certificate is valid for (DNS names or IP addresses).
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    # Serve plaintext gRPC without client certificates. Development only; logged loudly.
    insecure_dev: bool = False
    # Largest request or response message, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # How far past max_message_bytes a request is still read, so that its refusal carries an exchange id
    # (and is recorded); a larger one gRPC refuses unread (still recorded, but its caller gets no id).
    max_message_headroom_bytes: int = 1024 * 1024
    # Refusals recorded one by one per caller per window; past that, one record counts the rest of the window.
    refusal_records_per_window: int = 60
    # The length of that window, in seconds.
    refusal_window_seconds: float = 60.0
    # The CA's private key, if kept apart from `home` (e.g. a volume only the hub's user can read);
    # empty: `home`/ca/ca.key. The hub refuses to start if others can read it.
    ca_key_file: Path | None = None
    # Validity of client certificates the hub issues, in days.
    certificate_days: int = 365
    # The operator's holidays and make-up working days for the 10-working-day rule, over the State Council's
    # notices from the chinesecalendar package (the file wins); for local days off and a year the package lacks.
    calendar_file: Path | None = None
    # Longest validity a share request may ask for, in days.
    max_grant_days: int = 1096
    # The audit log's name in its checkpoints (C2SP origin), e.g. "hub.xm.gov.cn/exchange/audit".
    audit_origin: str = "exchange.local/audit"
    # Seconds between signed checkpoints while records arrive.
    checkpoint_seconds: float = 2.0
    # Where the audit log is integrated and its checkpoints signed: "process", a process of its own that the hub
    # starts, restarts if it dies and stops with it (the serving process's core is left to calls); "thread", a
    # thread of the serving process (one interpreter less: the test suite's hubs).
    audit_integrator: str = "process"
    # Seconds between whole checks of the stored audit log against its seals and signed checkpoint
    # (also done at start); a failed check turns the hub NOT_SERVING.
    audit_check_seconds: float = 3600.0
    # Days the audit log keeps records in full (at least 180, the legal minimum for network logs).
    audit_retention_days: int = 180
    # Under load (exchange records arriving more often than one per this many milliseconds), how long an audit
    # commit waits for the records of the calls in flight to join it: one commit for several calls, each call
    # answered at most this much later. 0: every commit at once. A lone call never waits for it.
    audit_gather_ms: float = 2.0
    # Directories file backends may serve documents from; empty: `home`/documents.
    document_roots: tuple[str, ...] = ()
    # Hosts bindings may reach: names, ".suffix" names, addresses or networks (e.g. "10.20.0.0/16").
    # Empty: any host except this machine (loopback), link-local (cloud metadata) and unspecified addresses.
    backend_hosts: tuple[str, ...] = ()
    # Let REST bindings use plain http:// (off: https only). For a test bench or a local demo.
    allow_plain_http: bool = False
    # Let SQL bindings name SQLite files (a path reads any file the hub can). For a test bench or the demo.
    allow_sqlite_backends: bool = False
    # Longest wait for a department's backend when its binding sets none, in seconds.
    provider_timeout_seconds: float = 10.0
    # host:port of the HTTP port for /metrics, /healthz and /readyz; empty: none.
    metrics_listen: str = "127.0.0.1:9464"
    # Seconds between checks that the store and the audit log can be written (health).
    health_check_seconds: float = 5.0
    # Seconds between the hub's checks of the audit search indexes against the verified records
    # (`exchange audit check-index`); 0: never.
    audit_index_check_seconds: float = 3600.0
    # Hub processes `exchange serve` runs on the one `listen` port (SO_REUSEPORT), under a supervisor that
    # restarts one that dies; more than 1 needs a PostgreSQL store and a fixed port. Worker i serves metrics on
    # metrics_listen's port + i; only worker 0 serves the console.
    workers: int = 1
    # Threads for the blocking parts of calls (store, backends); about the calls in flight one process serves.
    worker_threads: int = 32
    # Most of those threads one department's backends may hold at once (0: half of worker_threads), so a
    # backend that hangs cannot take the threads every other department needs.
    backend_threads_per_department: int = 0
    # Lookups filtered on a masked item (a grant's verify_masked) that may find nothing each day, per grant
    # and per consumer system, hub-wide (0: every such lookup is refused, since each is reserved as a miss).
    masked_filter_misses_per_day: int = 5
    # Misses on one masked pattern (values sharing the visible parts, e.g. an ID number's first 6 and last 4)
    # after which lookups on that pattern are refused for the day and counted as an enumeration (an alert).
    masked_filter_pattern_misses: int = 3
    # Calls of a grant's daily quota a hub process takes from the store at a time (at most a tenth of the
    # quota). Unused calls are given back at a clean stop; a crash loses them (counted as used).
    quota_lease_calls: int = 20
    # Seconds between a hub process's quota heartbeats: it renews its holder record (for three beats) and
    # parks its unused calls there; a killed process's parked calls return within four beats.
    quota_heartbeat_seconds: float = 5.0
    # Subscriptions (docs/integrating.md "Subscriptions"). Seconds between polls of a subscribed source for
    # changes after the stored position; also how often a follower with nothing to send looks again.
    subscription_poll_seconds: float = 2.0
    # Most changes taken from a source in one poll, and most sent in one batch to a follower.
    subscription_batch_size: int = 500
    # Hours a change waits unacknowledged in a subscription's window before it is dropped; the follower is then
    # told the dropped sequence numbers (a gap) and re-reads by query.
    subscription_retention_hours: float = 72.0
    # Seconds a follower's reader lease and a process's poll lease last without renewal: after a hub process
    # dies, another takes over its polls, and a consumer may follow again, once this has passed.
    subscription_lease_seconds: float = 15.0
    # Working days an owning department has to answer an objection to its data (疑义、错误: 快速校核).
    objection_answer_working_days: int = 5
    # host:port of the web console for people (HTTPS; a browser's client certificate or a sign-in link from
    # `exchange console login`); empty: no console.
    console_listen: str = ""
    # The console's address as people's browsers reach it, for sign-in links (e.g. https://hub.xm.gov.cn:8443);
    # empty: https://<console_listen>.
    console_url: str = ""
    # Minutes a sign-in link from `exchange console login` stays valid (it opens once).
    console_link_minutes: float = 5.0
    # Minutes a console session lasts without a request, and hours it lasts at most, whatever its use.
    console_idle_minutes: float = 30.0
    console_session_hours: float = 8.0
    # Rows on one page of a console list.
    console_page_size: int = 50
    # Federation (docs/federation.md). This hub's code: its administrative division code (GB/T 2260, six digits,
    # e.g. 350203 思明区, 350200 厦门市, 350000 福建省; 000000 national); empty: the hub does not federate.
    hub_code: str = ""
    # This hub's name as its peers show it, and its level: county, city, province or national.
    hub_name: str = ""
    hub_level: str = ""
    # host:port of the federation listener, where peer hubs call (mutual TLS with hub certificates, trusting
    # only the CAs of registered peers); empty: none (the hub neither peers nor offers its catalog). With several
    # workers, each serves it on the same port (docs/federation.md, "A hub of several processes").
    federation_listen: str = ""
    # Seconds between two pulls of each active peer's offered catalog entries: a change at a peer's home
    # reaches this hub within this time plus one call (federation_call_seconds).
    federation_sync_seconds: float = 30.0
    # Longest wait for a peer hub's answer, in seconds; past it the call fails UNAVAILABLE naming the peer. An
    # operator's RegisterPeer, SuspendPeer, ResumePeer or EndPeer waits this long for the peer: keep it below the
    # operator's own call deadline (call_timeout_seconds).
    federation_call_seconds: float = 5.0
    # How many hubs a consumer's call to an entry homed at another hub may pass on the way to its home
    # (docs/federation.md, "Exchanges across hubs"); a call that would need more is refused.
    federation_hop_limit: int = 4
    # Seconds in-flight calls get to finish on shutdown.
    shutdown_grace_seconds: float = 10.0
    # The hub's event loop: "uvloop" (libuv: fewer CPU cycles per call and per wake-up) or "asyncio" (the
    # standard library's, for platforms without uvloop or to rule it out when investigating).
    event_loop: str = "uvloop"
    log_level: str = "INFO"
    # Tracing of calls with OpenTelemetry: "off" (no spans, no exporter) or "otlp" (spans batched in the
    # background to an OpenTelemetry collector at tracing_endpoint; a collector that is down costs no call).
    tracing: str = "off"
    # The collector's OTLP/gRPC address: http://host:4317 (plaintext) or https://host:4317 (TLS).
    tracing_endpoint: str = "http://127.0.0.1:4317"
    # The service name the hub's spans carry (service.name), e.g. to tell the hubs of two regions apart.
    tracing_service_name: str = "exchange-hub"
    # Share of traces started at the hub that are kept (0 to 1); a caller's own sampling decision is followed.
    tracing_sample_ratio: float = 1.0
    # "json" (one object a line, for log collectors) or "text".
    log_format: str = "json"
    # Client side: where the hub is, which identity directory to use, and the call deadline.
    hub_address: str = "localhost:7443"
    identity: Path | None = None
    call_timeout_seconds: float = 10.0
    # Where these settings were read from, for messages.
    sources: tuple[str, ...] = field(default=("defaults",), compare=False)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'exchange.db'}"

    @property
    def effective_document_roots(self) -> tuple[Path, ...]:
        return tuple(Path(r) for r in self.document_roots) or (self.home / "documents",)


_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def load(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Reads the settings: defaults, then ``path`` (or exchange.toml if present), then the environment.

    ``overrides`` (from command-line flags) apply last.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    file = path or (Path(env[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in env else None)
    if file is None and DEFAULT_FILE.exists():
        file = DEFAULT_FILE
    if file is not None:
        settings = _apply(settings, _read_file(file), f"file {file}")
    settings = _apply(settings, _from_env(env), "environment")
    if overrides:
        settings = _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "command line")
    _validate(settings)
    return settings


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: is it the right file?") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    names = {f.name for f in fields(Settings)} - {"sources"}
    out: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name not in names:
                raise ConfigError(
                    f"unknown setting {key}; known: {', '.join(sorted(ENV_PREFIX + n.upper() for n in names))}"
                )
            out[name] = value
    return out


def _apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    kinds = {f.name: f.type for f in fields(Settings)}
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in kinds or name == "sources":
            raise ConfigError(f"{source}: unknown setting {name!r}")
        changes[name] = _coerce(name, str(kinds[name]), raw, source)
    if not changes:
        return settings
    return replace(settings, **changes, sources=(*settings.sources, source))


def _coerce(name: str, kind: str, raw: Any, source: str) -> Any:  # noqa: PLR0911 - one branch per type
    where = f"{source}: setting {name!r}"
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError("expected a whole number")
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(str(raw))
        if kind == "Path | None":
            return Path(str(raw)) if str(raw) else None
        if kind == "tuple[str, ...]":
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        return str(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {raw!r} is not valid ({e})") from None


# Numeric settings and their allowed ranges (inclusive), with the unit for messages.
_RANGES: tuple[tuple[str, float, float, str], ...] = (
    ("max_message_bytes", 1024, 256 * 1024 * 1024, "bytes"),
    ("max_message_headroom_bytes", 0, 64 * 1024 * 1024, "bytes"),
    ("refusal_records_per_window", 1, 100000, "records"),
    ("refusal_window_seconds", 1, 86400, "seconds"),
    ("certificate_days", 1, 825, "days"),
    ("max_grant_days", 1, 3660, "days"),
    ("checkpoint_seconds", 0.1, 3600, "seconds"),
    ("audit_retention_days", 180, 36500, "days"),
    ("audit_check_seconds", 1, 7 * 86400, "seconds"),
    ("audit_gather_ms", 0, 50, "milliseconds"),
    ("shutdown_grace_seconds", 0, 3600, "seconds"),
    ("call_timeout_seconds", 0.001, 3600, "seconds"),
    ("provider_timeout_seconds", 0.001, 600, "seconds"),
    ("workers", 1, 64, "processes"),
    ("worker_threads", 2, 1024, "threads"),
    ("backend_threads_per_department", 0, 1024, "threads"),
    ("health_check_seconds", 0.1, 300, "seconds"),
    ("masked_filter_misses_per_day", 0, 1000, "lookups"),
    ("masked_filter_pattern_misses", 1, 100, "lookups"),
    ("quota_lease_calls", 1, 100_000, "calls"),
    ("quota_heartbeat_seconds", 0.2, 60, "seconds"),
    ("audit_index_check_seconds", 0, 7 * 86400, "seconds"),
    ("objection_answer_working_days", 1, 60, "working days"),
    ("subscription_poll_seconds", 0.05, 3600, "seconds"),
    ("subscription_batch_size", 1, 5000, "changes"),
    ("subscription_retention_hours", 0.001, 24 * 90, "hours"),
    ("subscription_lease_seconds", 1, 3600, "seconds"),
    ("console_link_minutes", 0.5, 60, "minutes"),
    ("console_idle_minutes", 1, 24 * 60, "minutes"),
    ("console_session_hours", 0.1, 24, "hours"),
    ("console_page_size", 5, 500, "rows"),
    ("tracing_sample_ratio", 0, 1, "(a share of traces)"),
    ("federation_sync_seconds", 0.1, 86400, "seconds"),
    ("federation_call_seconds", 0.01, 600, "seconds"),
    ("federation_hop_limit", 1, 16, "hops"),
)

HUB_LEVELS = ("county", "city", "province", "national")


def _federation_problems(s: Settings) -> list[str]:
    """A federating hub needs its code, name and level; its code is a six-digit division code."""
    problems: list[str] = []
    if s.federation_listen:
        host, _, port = s.federation_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            problems.append(f"federation_listen must be host:port, got {s.federation_listen!r}")
        if not (s.hub_code and s.hub_name and s.hub_level):
            problems.append("federation_listen needs hub_code, hub_name and hub_level")
    if s.hub_code and (len(s.hub_code) != 6 or not s.hub_code.isdigit()):
        problems.append(f"hub_code must be a six-digit administrative division code, got {s.hub_code!r}")
    if s.hub_level and s.hub_level not in HUB_LEVELS:
        problems.append(f"hub_level must be one of {', '.join(HUB_LEVELS)}, got {s.hub_level!r}")
    return problems


def _console_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.console_url and not s.console_url.startswith("https://"):
        problems.append(f"console_url must be an https:// address, got {s.console_url!r}")
    if s.console_idle_minutes > s.console_session_hours * 60:
        problems.append("console_idle_minutes must not be longer than console_session_hours")
    return problems


def _subscription_problems(s: Settings) -> list[str]:
    """A follower renews its reader lease at least every poll: the lease must outlast the wait between polls."""
    if s.subscription_lease_seconds <= 2 * s.subscription_poll_seconds:
        return ["subscription_lease_seconds must be more than twice subscription_poll_seconds"]
    return []


def _tracing_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.event_loop not in {"uvloop", "asyncio"}:
        problems.append(f"event_loop must be uvloop or asyncio, got {s.event_loop!r}")
    if s.tracing not in {"off", "otlp"}:
        problems.append(f"tracing must be off or otlp, got {s.tracing!r}")
    elif s.tracing == "otlp" and not s.tracing_endpoint.startswith(("http://", "https://")):
        problems.append(f"tracing_endpoint must be http://host:port or https://host:port, got {s.tracing_endpoint!r}")
    if not s.tracing_service_name.strip():
        problems.append("tracing_service_name must not be empty")
    return problems


def _audit_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    if s.audit_integrator not in {"process", "thread"}:
        problems.append(f"audit_integrator must be process or thread, got {s.audit_integrator!r}")
    if not s.audit_origin or any(c.isspace() for c in s.audit_origin) or "+" in s.audit_origin:
        problems.append("audit_origin must be a non-empty name without spaces or '+'")
    return problems


def _validate(s: Settings) -> None:
    problems: list[str] = []
    addresses = [("listen", s.listen), ("hub_address", s.hub_address)]
    if s.console_listen:
        addresses.append(("console_listen", s.console_listen))
    for name, value in addresses:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            problems.append(f"{name} must be host:port, got {value!r}")
    for name, low, high, unit in _RANGES:
        if not low <= getattr(s, name) <= high:
            problems.append(f"{name} must be between {low} and {high} {unit}")
    problems += _console_problems(s)
    problems += _tracing_problems(s)
    problems += _subscription_problems(s)
    problems += _federation_problems(s)
    if s.calendar_file is not None and not s.calendar_file.is_file():
        problems.append(f"calendar_file {s.calendar_file} does not exist")
    if s.log_level.upper() not in _LOG_LEVELS:
        problems.append(f"log_level must be one of {', '.join(sorted(_LOG_LEVELS))}")
    if s.log_format not in {"json", "text"}:
        problems.append("log_format must be json or text")
    problems += _audit_problems(s)
    if not s.hostnames:
        problems.append("hostnames must name at least one host")
    url = s.effective_database_url
    if not url.startswith(("sqlite:", "postgresql")):
        problems.append(f"database_url must be a sqlite: or postgresql URL, got {url.split(':')[0]!r}")
    if problems:
        raise ConfigError(f"invalid configuration (from {', '.join(s.sources)}): " + "; ".join(problems))
