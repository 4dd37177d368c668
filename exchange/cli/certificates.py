"""Certificate lifecycle verbs: a holder renews its own certificate; the hub's host rotates and retires its CA.

``cert renew`` and ``cert bundle`` call the hub with the caller's identity.
``ca ...`` run on the hub's host, on its home directory and store: whoever
runs them can read the CA key, so they do not go through the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from google.protobuf import json_format

from exchange import ca, pki
from exchange import wire as w
from exchange.cli import report, tables, userfiles
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import ConfigError
from exchange.store import Store
from exchange.v1 import registry_pb2 as rpb


def _files(settings: Settings) -> pki.HubFiles:
    return pki.HubFiles(settings.home, settings.ca_key_file)


def _install(identity: pki.IdentityFiles, key: pki.PrivateKey, cert_pem: bytes, bundle_pem: bytes) -> None:
    """Puts a renewed key and certificate in place, keeping the previous pair as ``*.previous``.

    The new pair is written beside the old first, so an interruption leaves a
    usable identity: the old one, or the new one.
    """
    staged_key, staged_cert = identity.key.with_name("key.pem.next"), identity.cert.with_name("cert.pem.next")
    for path in (staged_key, staged_cert):
        path.unlink(missing_ok=True)
    pki.write_secret(staged_key, pki.key_pem(key))
    pki.write_public(staged_cert, cert_pem)
    os.replace(identity.key, identity.key.with_name("key.pem.previous"))
    os.replace(identity.cert, identity.cert.with_name("cert.pem.previous"))
    os.replace(staged_key, identity.key)
    os.replace(staged_cert, identity.cert)
    pki.replace_file(identity.ca, bundle_pem, 0o644)


def cert_renew(args: argparse.Namespace, settings: Settings) -> int:
    """Renews the caller's own certificate over a new key, in its identity directory."""
    with HubClient(settings, args.identity) as hub:
        me = hub.call(hub.registry.WhoAmI, rpb.WhoAmIRequest())
        ref = w.principal_ref_from_wire(me.principal, "principal")
        key = pki.new_key()
        request = rpb.RenewCertificateRequest(csr_pem=pki.make_csr(key, ref), validity_days=args.days)
        renewed = hub.call(hub.registry.RenewCertificate, request)
        identity = pki.IdentityFiles(hub.identity)
    _install(identity, key, renewed.certificate.pem.encode(), renewed.trust_bundle.pem.encode())
    cert = renewed.certificate
    if args.json:
        print(json_format.MessageToJson(cert, ensure_ascii=False))
        return 0
    until = cert.not_after.ToJsonString()
    print(f"renewed the certificate of {ref}: {cert.fingerprint_sha256[:16]}… valid until {until}")
    print(f"identity {identity.directory} now uses the new key; the previous pair is kept as *.previous")
    old = me.certificate_fingerprint_sha256
    print(f"the previous certificate ({old[:16]}…) stays valid until it expires; once every copy of this identity")
    print(f"is renewed, retire it: exchange cert revoke {old} --keep-renewals --reason renewed")
    return 0


def cert_bundle(args: argparse.Namespace, settings: Settings) -> int:
    """Fetches the hub's trust bundle into the identity's CA file (or --out)."""
    if args.out is not None:
        userfiles.check_writable(args.out, "the trust bundle")
    with HubClient(settings, args.identity) as hub:
        bundle = hub.call(hub.registry.GetTrustBundle, rpb.GetTrustBundleRequest())
        target = args.out or pki.IdentityFiles(hub.identity).ca
    pki.replace_file(target, bundle.pem.encode(), 0o644)
    count = len(pki.split_pems(bundle.pem.encode()))
    if args.json:
        shown = {"written_to": str(target), "certificates": count}
        print(json.dumps({**shown, "signing_fingerprint_sha256": bundle.signing_fingerprint_sha256}))
        return 0
    print(f"wrote {count} trusted CA certificate(s) to {target}; new certificates are signed by ", end="")
    print(f"{bundle.signing_fingerprint_sha256[:16]}…")
    return 0


def ca_status(args: argparse.Namespace, settings: Settings) -> int:
    files = _files(settings)
    server = pki.load_cert(files.server_cert)
    entries = ca.status(files)
    issuer = next((pki.fingerprint(c) for c in ca.trusted(files) if pki.issued_by(server, c)), "")
    until = f"{server.not_valid_after_utc:%Y-%m-%d}"
    if args.json:
        cas = [{**dataclasses.asdict(e), "not_after": e.not_after.isoformat()} for e in entries]
        server_cert = {"not_after": server.not_valid_after_utc.isoformat(), "issuer_fingerprint": issuer or None}
        print(json.dumps({"cas": cas, "server_certificate": server_cert}, ensure_ascii=False, indent=2))
        return 0
    rows = [
        [
            e.fingerprint,
            "signing" if e.signing else "trusted (rotated out)",
            f"{e.not_after:%Y-%m-%d}",
            "kept" if e.key_kept else "no key",
            e.subject,
        ]
        for e in entries
    ]
    print(tables.render(["fingerprint", "role", "until", "key", "subject"], rows, max_column=64))
    print(f"server certificate: until {until}, signed by {issuer[:16] + '…' if issuer else 'no trusted CA'}")
    return 0


def _trusted(files: pki.HubFiles, fingerprint: str) -> x509.Certificate | None:
    return next((c for c in ca.trusted(files) if pki.fingerprint(c) == fingerprint), None)


def ca_rotate(args: argparse.Namespace, settings: Settings) -> int:
    old, new = ca.rotate(_files(settings), args.name, args.days)
    report.emit(
        args,
        {"signing_fingerprint": new, "previous_fingerprint": old},
        f"new signing CA {new[:16]}…; the previous CA {old[:16]}… stays trusted until retired",
        "next: give every caller and provider the new bundle (`exchange cert bundle`), then run",
        "`exchange ca renew-server`, have holders renew (`exchange cert renew`), and finally",
        f"`exchange ca retire {old}`. A running hub takes the new files on its next connection.",
    )
    return 0


def ca_renew_server(args: argparse.Namespace, settings: Settings) -> int:
    cert = ca.renew_server(_files(settings), settings.hostnames, args.days)
    names = ", ".join(settings.hostnames)
    report.emit(
        args,
        {"hostnames": list(settings.hostnames), "not_after": cert.not_valid_after_utc.isoformat()},
        f"new server certificate for {names}, valid until {cert.not_valid_after_utc:%Y-%m-%d}",
        "the running hub presents it from its next connection (to providers: after a restart)",
    )
    return 0


def ca_hub_cert(args: argparse.Namespace, settings: Settings) -> int:
    """The hub certificate this hub presents to its peer hubs (federation), for ``hub_code``."""
    if not settings.hub_code:
        raise ConfigError("set hub_code (the hub's six-digit division code) before issuing its hub certificate")
    cert = ca.issue_hub(_files(settings), settings.hub_code, settings.hostnames, args.days)
    report.emit(
        args,
        {"hub_code": settings.hub_code, "not_after": cert.not_valid_after_utc.isoformat()},
        f"new hub certificate for hub {settings.hub_code} ({pki.hub_uri(settings.hub_code)}), "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d}",
        "the hub presents it to its peers from their next connection (no restart)",
    )
    return 0


def ca_retire(args: argparse.Namespace, settings: Settings) -> int:
    files = _files(settings)
    target = _trusted(files, args.fingerprint)
    still: list[str] = []
    if target is not None:
        store = Store(settings.effective_database_url)
        try:
            now = dt.datetime.now(dt.UTC)
            still = ca.still_issued_by(target, store.registry.valid_certificates(now), now)
        finally:
            store.close()
    ca.retire(files, args.fingerprint, still, args.force)
    lines = [f"CA {args.fingerprint[:16]}… is no longer trusted; its kept key was deleted"]
    if still:
        lines.append(f"{len(still)} certificate(s) it signed stop working now (forced)")
    report.emit(args, {"retired_fingerprint": args.fingerprint, "certificates_stopped": len(still)}, *lines)
    return 0


def add_verbs(top: Any, verb: Any, cert: Any) -> None:
    """``cert renew|bundle`` on the ``cert`` group, and the ``ca`` group, with the CLI's ``_verb`` helper."""
    p = verb(cert, "renew", cert_renew, "renew your own certificate over a new key (before it expires)")
    p.add_argument("--days", type=int, default=0, help="validity in days (default: the hub's)")
    p = verb(cert, "bundle", cert_bundle, "fetch the CA certificates the hub trusts into your identity")
    p.add_argument("--out", type=Path, help="write here instead of the identity's ca.pem")
    group = top.add_parser("ca", help="the hub's certificate authority (on the hub's host)")
    sub = group.add_subparsers(dest="verb", required=True)
    verb(sub, "status", ca_status, "the CAs the hub trusts, which one signs, and the server certificate")
    p = verb(sub, "rotate", ca_rotate, "make a new signing CA; the old one stays trusted until retired")
    p.add_argument("--name", default="Exchange hub CA", help="the new CA's common name")
    p.add_argument("--days", type=int, default=3650, help="the new CA's validity in days")
    p = verb(sub, "renew-server", ca_renew_server, "a new server key and certificate from the signing CA")
    p.add_argument("--days", type=int, default=825, help="validity in days")
    p = verb(sub, "hub-cert", ca_hub_cert, "a new hub certificate for federation (names hub_code)")
    p.add_argument("--days", type=int, default=825, help="validity in days")
    p = verb(sub, "retire", ca_retire, "stop trusting a rotated-out CA and delete its kept key")
    p.add_argument("fingerprint", help="the CA's SHA-256 fingerprint, as `exchange ca status` shows it")
    p.add_argument("--force", action="store_true", help="even though certificates it signed are still valid")
