"""Exercise ocpd's native dependencies inside the systemd unit's sandbox.

containers.sh runs this as a oneshot unit made from contrib/systemd/ocpd.service
with only Type= and ExecStart= changed, so that MemoryDenyWriteExecute=,
SystemCallFilter=, RestrictAddressFamilies= and the rest apply exactly as they
do to ocpd. A directive that breaks a code path ocpd needs shows up here as a
crash (SIGSYS), an EPERM or a failed assertion rather than in production.
"""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
import ssl
import sys
import tempfile
from pathlib import Path


class SelftestError(AssertionError):
    pass


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise SelftestError(what)


def crypto() -> None:
    import nacl.bindings as sodium
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    public, secret = sodium.crypto_sign_seed_keypair(os.urandom(32))
    signed = sodium.crypto_sign(b"ocpd", secret)
    expect(sodium.crypto_sign_open(signed, public) == b"ocpd", "Ed25519 round trip")
    curve = sodium.crypto_sign_ed25519_pk_to_curve25519(public)
    expect(len(curve) == 32, "Ed25519 to X25519")
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    shared = a.exchange(b.public_key())
    expect(shared == b.exchange(a.public_key()), "X25519 agreement")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"s", info=b"i").derive(shared)
    nonce = os.urandom(12)
    for aead in (AESGCM(key), ChaCha20Poly1305(key)):
        sealed = aead.encrypt(nonce, b"payload", b"aad")
        expect(aead.decrypt(nonce, sealed, b"aad") == b"payload", f"{type(aead).__name__}")


def write_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost: (cert.pem, key.pem) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls13(workdir: Path) -> None:
    """A TLS 1.3 handshake through OpenSSL in memory, as hypercorn does with TLS on."""
    cert_path, key_path = write_certificate(workdir)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (client, server):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    expect(client.version() == "TLSv1.3", f"negotiated {client.version()}")


def storage(workdir: Path) -> None:
    conn = sqlite3.connect(workdir / "t.db")
    expect(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal", "SQLite WAL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    with conn:
        conn.execute("INSERT INTO t VALUES ('k', randomblob(4096))")
    expect(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "SQLite integrity")
    conn.close()


def sockets() -> None:
    families = [(socket.AF_INET, "127.0.0.1")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::1"))
    for family, host in families:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError:  # no ::1 in this network namespace
                if family == socket.AF_INET6:
                    continue
                raise
            sock.listen()


def event_loop() -> None:
    import trio

    async def main() -> int:
        return await trio.to_thread.run_sync(lambda: sum(range(1000)))

    expect(trio.run(main) == 499500, "trio worker thread")


def codecs() -> None:
    import cbor2
    import fastjsonschema
    import rfc8785
    import yaml

    expect(cbor2.loads(cbor2.dumps({"a": [1, 2]})) == {"a": [1, 2]}, "cbor2")
    expect(rfc8785.dumps({"b": 1, "a": 2}) == b'{"a":2,"b":1}', "rfc8785")
    expect(yaml.safe_load("a: 1") == {"a": 1}, "yaml")
    validate = fastjsonschema.compile({"type": "object", "required": ["a"]})
    validate({"a": 1})


def sandbox_is_on() -> None:
    """Negative controls: what the unit forbids is really refused here."""
    import mmap

    refused = []
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    except OSError:
        refused.append("MemoryDenyWriteExecute")
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
    except OSError:
        refused.append("RestrictAddressFamilies")
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # in @resources
    except OSError:
        refused.append("SystemCallFilter")
    expected = ["MemoryDenyWriteExecute", "RestrictAddressFamilies", "SystemCallFilter"]
    expect(refused == expected, f"only {refused} refused, expected {expected}")


def main(argv: list[str]) -> int:
    """``--outside``: skip the negative controls (a sanity run on a plain host).

    ``--write-certificate DIR``: only write a test certificate and key to DIR.
    """
    if argv[:1] == ["--write-certificate"]:
        for path in write_certificate(Path(argv[1])):
            print(path)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checks = (
            *(() if "--outside" in argv else (sandbox_is_on,)),
            crypto,
            lambda: tls13(workdir),
            lambda: storage(workdir),
            sockets,
            event_loop,
            codecs,
        )
        for check in checks:
            check()
    print(f"sandbox selftest OK (uid {os.getuid()}, python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
