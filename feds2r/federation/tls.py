"""Certificates and SuperNode keys for trying TLS and node authentication on one machine.

``make_certificates(DIR)`` writes a self-signed CA (``ca.crt``, ``ca.key``) and a server
certificate signed by it (``server.crt``, ``server.key``) for ``localhost`` / ``127.0.0.1`` (and
any extra host names). ``make_node_keys(DIR, N)`` writes N EC key pairs (``node-K``,
``node-K.pub``; OpenSSH public format, as ``flwr supernode register`` expects). For a real
deployment use your organisation's CA; these are for trying it out.

``write_credentials(DIR, ...)`` writes both as one set for ``feds2r federate certs``: it refuses
a folder that already holds any of them unless ``force``, and then replaces the whole set, so a
new CA never sits beside node keys of an old one.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import tempfile
from pathlib import Path

from feds2r.errors import Feds2rError
from feds2r.io import write_atomic

CREDENTIAL_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")
"""The files of :func:`make_certificates`; :func:`make_node_keys` adds ``node-K``/``node-K.pub``."""


def existing_credentials(out: str | Path) -> list[Path]:
    """The files of a credential set (CA, server certificate, node keys) already in ``out``."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(
        p
        for p in out.iterdir()
        if p.name in CREDENTIAL_FILES or re.fullmatch(r"node-\d+(\.pub)?", p.name)
    )


def write_credentials(
    out: str | Path,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    node_keys: int = 0,
    *,
    force: bool = False,
) -> tuple[dict[str, Path], list[tuple[Path, Path]]]:
    """A CA, a server certificate and ``node_keys`` SuperNode key pairs in ``out``, as one set.

    Refuses (:class:`~feds2r.errors.Feds2rError`) when ``out`` already holds any file of a set,
    unless ``force``: then every old file of the set is removed, node keys beyond ``node_keys``
    included, and the new set takes its place. The set is written into a hidden folder inside
    ``out`` first, so a failure leaves the old files as they were.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise Feds2rError(f"--out {out} is a file; give a folder for the certificates and keys")
    if node_keys < 0:
        raise Feds2rError(f"--node-keys must be 0 or more, got {node_keys}")
    old = existing_credentials(out)
    if old and not force:
        raise Feds2rError(
            f"{out} already holds certificates or keys ({', '.join(p.name for p in old)}); "
            "choose a new folder, or add --force to replace the CA, the server certificate and "
            "every node key (register the new node keys again)"
        )
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".credentials-", dir=out))
    try:
        make_certificates(stage, hosts)
        make_node_keys(stage, node_keys)
        for path in old:
            path.unlink()
        for path in sorted(stage.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    paths = {
        "ca_cert": out / "ca.crt",
        "ca_key": out / "ca.key",
        "cert": out / "server.crt",
        "key": out / "server.key",
    }
    pairs = [(out / f"node-{k}", out / f"node-{k}.pub") for k in range(node_keys)]
    return paths, pairs


def make_certificates(
    out: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 30
) -> dict[str, Path]:
    """Write ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key`` into ``out``."""
    # here, not at the top: cryptography comes with the optional Flower extra (feds2r[flower])
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feds2r local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    paths = {
        "ca_cert": out / "ca.crt",
        "ca_key": out / "ca.key",
        "cert": out / "server.crt",
        "key": out / "server.key",
    }
    write_atomic(paths["ca_cert"], ca_cert.public_bytes(pem))
    _write_private(paths["ca_key"], ca_key.private_bytes(pem, private, plain))
    write_atomic(paths["cert"], cert.public_bytes(pem))
    _write_private(paths["key"], key.private_bytes(pem, private, plain))
    return paths


def make_node_keys(out: str | Path, num: int) -> list[tuple[Path, Path]]:
    """Write ``num`` SuperNode key pairs ``node-K`` (private, PEM) / ``node-K.pub`` (OpenSSH)."""
    # here, not at the top: cryptography comes with the optional Flower extra (feds2r[flower])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    pairs = []
    for k in range(num):
        key = ec.generate_private_key(ec.SECP384R1())
        private = out / f"node-{k}"
        public = out / f"node-{k}.pub"
        _write_private(
            private,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
        )
        write_atomic(
            public,
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ),
        )
        pairs.append((private, public))
    return pairs


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (atomically).

    The key goes into a new file with an unpredictable name, created with ``O_EXCL`` and mode
    0600 (``tempfile.mkstemp``), so no file or symlink planted beside it is opened or followed;
    it is then renamed over ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
