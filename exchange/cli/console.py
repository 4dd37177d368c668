"""Verbs for the web console: a one-time sign-in link, and the person's identity for a browser.

``console login`` asks the hub, with the caller's certificate, for a link that opens one console
session. ``cert export`` writes the identity as a password-protected PKCS#12 file, which a browser
imports to sign in to the console with the certificate itself (no link needed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from exchange import pki
from exchange.cli import userfiles
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import ConfigError, FailedPrecondition, InvalidArgument
from exchange.models import PrincipalKind
from exchange.v1 import console_pb2 as pb

# Browsers refuse a PKCS#12 file without a password; a short one protects the key little.
MIN_PASSWORD_LENGTH = 8
# PBKDF2 rounds for the file's key: costly to guess, still quick for a browser to import.
KDF_ROUNDS = 200_000


def console_login(args: argparse.Namespace, settings: Settings) -> int:
    """Prints a one-time sign-in link to the console for the calling person, and when it expires."""
    with HubClient(settings, args.identity) as hub:
        link = hub.call(hub.console.CreateSignInLink, pb.CreateSignInLinkRequest())
    expires = link.expire_time.ToDatetime(tzinfo=dt.UTC)
    if args.json:
        print(json.dumps({"url": link.url, "expires": link.expire_time.ToJsonString()}))
        return 0
    minutes = max(0, round((expires - dt.datetime.now(dt.UTC)).total_seconds() / 60))
    print(link.url)
    print(f"opens one console session, once; expires {expires:%Y-%m-%d %H:%M} UTC (in about {minutes} min)")
    return 0


def _identity(args: argparse.Namespace, settings: Settings) -> pki.IdentityFiles:
    directory = args.identity or settings.identity
    if directory is None:
        raise ConfigError(
            "no identity to export: pass --identity DIR (a directory with key.pem, cert.pem and ca.pem, "
            "as `exchange cert issue` writes) or set EXCHANGE_IDENTITY"
        )
    files = pki.IdentityFiles(Path(directory))
    for path in (files.key, files.cert, files.ca):
        if not path.is_file():
            raise ConfigError(f"identity file {path} is missing: is {files.directory} an identity directory?")
    return files


def _read(files: pki.IdentityFiles) -> tuple[pki.PrivateKey, x509.Certificate, list[x509.Certificate]]:
    try:
        key = pki.load_key(files.key)
        cert = pki.load_cert(files.cert)
        chain = pki.split_pems(files.ca.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read the identity in {files.directory}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(
            f"the identity in {files.directory} cannot be read: key.pem must hold an EC key, cert.pem and ca.pem "
            "PEM certificates"
        ) from None
    if key.public_key() != cert.public_key():
        raise ConfigError(f"in {files.directory}, key.pem is not the key of cert.pem (a renewal cut short?)")
    return key, cert, chain


def _password(args: argparse.Namespace) -> bytes:
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
            raise InvalidArgument(f"cannot read the password file {args.password_file}: {why}") from None
        password = text.rstrip("\r\n")
    else:
        try:
            password = getpass.getpass("password for the exported file: ")
            again = getpass.getpass("the same password again: ")
        except EOFError:
            raise InvalidArgument("no password was typed: give one at the prompt or with --password-file") from None
        if password != again:
            raise InvalidArgument("the two passwords differ; run the command again")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(
            f"the password must have at least {MIN_PASSWORD_LENGTH} characters: browsers need one, and it guards "
            "your private key"
        )
    return password.encode()


def _kind(cert: x509.Certificate) -> PrincipalKind | None:
    """The kind of principal a hub certificate names (its URI SAN), if it names one."""
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    for uri in uris:
        kind = uri.removeprefix(pki.URI_PREFIX).partition(":")[0]
        if uri.startswith(pki.URI_PREFIX) and kind in {k.value for k in PrincipalKind}:
            return PrincipalKind(kind)
    return None


def _write(path: Path, data: bytes, force: bool) -> None:
    if path.is_dir():
        raise FailedPrecondition(f"{path} is a directory: give a file name, e.g. {path / 'me.p12'}")
    if path.exists() or path.is_symlink():
        if not force:
            raise FailedPrecondition(f"{path} already exists: choose another file, or add --force to replace it")
        if path.is_symlink():
            raise FailedPrecondition(f"{path} is a link: remove it, or choose another file")
    try:
        if force:
            pki.replace_file(path, data, 0o600)
        else:
            pki.write_secret(path, data)
    except OSError as e:
        raise FailedPrecondition(f"cannot write {path}: {e.strerror}") from None


def cert_export(args: argparse.Namespace, settings: Settings) -> int:
    """Writes the identity's key, certificate and the hub's CA chain as a PKCS#12 file for a browser."""
    files = _identity(args, settings)
    key, cert, chain = _read(files)
    out = Path(args.out)
    userfiles.check_writable(out, "the PKCS#12 file")
    if out.exists() and not args.force:  # before asking for a password that would go unused
        raise FailedPrecondition(f"{out} already exists: choose another file, or add --force to replace it")
    password = _password(args)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    name = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    friendly = str(name[0].value).encode() if name else None
    data = pkcs12.serialize_key_and_certificates(friendly, key, cert, chain or None, encryption)
    _write(out, data, args.force)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    if args.json:
        shown = {"written_to": str(out), "fingerprint_sha256": pki.fingerprint(cert), "ca_certificates": len(chain)}
        print(json.dumps({**shown, "not_after": cert.not_valid_after_utc.isoformat()}))
        return 0
    print(f"wrote {out} (PKCS#12, mode 0600): key and certificate {pki.fingerprint(cert)[:16]}… valid until {until}")
    print(f"with {len(chain)} CA certificate(s); import it into your browser with the password you chose")
    if _kind(cert) is PrincipalKind.SYSTEM:
        print("note: this is a system's certificate: systems cannot sign in to the web console")
    return 0


def add_verbs(top: Any, verb: Any, cert: Any) -> None:
    """``console login`` and ``cert export``, with the CLI's ``_verb`` helper."""
    p = verb(cert, "export", cert_export, "write your identity as a PKCS#12 file for a browser (web console)")
    p.add_argument("--out", type=Path, required=True, help="the file to write, e.g. me.p12")
    p.add_argument("--password-file", type=Path, help="read the file's password from here (default: ask twice)")
    p.add_argument("--force", action="store_true", help="replace the file if it exists")
    console = top.add_parser("console", help="the web console").add_subparsers(dest="verb", required=True)
    verb(console, "login", console_login, "a one-time link that signs you in to the web console")
