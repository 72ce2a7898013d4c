"""The OCP crypto suite (OCP §8.1, D2, D5, D8).

* Ed25519 signatures through libsodium (PyNaCl). libsodium is the only
  verifier ocpd uses on network input: it refuses small-order and
  non-canonical points and S >= L, so every ocpd node accepts exactly the
  same signatures (D2; the ed25519-speccheck vectors pin this).
* SHA3-256 for digests and fingerprints.
* X25519 key agreement with small-order public keys and all-zero shared
  secrets refused; Ed25519 keys map to X25519 keys with libsodium's
  birational map.
* HKDF-SHA256, AES-256-GCM (payloads, shares) and ChaCha20-Poly1305 (peer
  session frames) from ``cryptography``.

Private keys are generated from the OS CSPRNG (libsodium's randombytes) and
never leave the objects that hold them except through explicit export.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ocpd.proto.errors import AuthError, MalformedError

__all__ = [
    "AEAD_TAG_SIZE",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "GCM_NONCE_SIZE",
    "X25519_KEY_SIZE",
    "DecryptionFailed",
    "SigningKey",
    "X25519KeyPair",
    "aes256gcm_decrypt",
    "aes256gcm_encrypt",
    "chacha20poly1305_decrypt",
    "chacha20poly1305_encrypt",
    "ed25519_pk_to_x25519",
    "ed25519_verify",
    "hkdf_sha256",
    "is_small_order_x25519",
    "random_bytes",
    "sha3_256",
    "x25519",
    "x25519_public_key",
]

ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_SEED_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
X25519_KEY_SIZE: Final = 32
GCM_NONCE_SIZE: Final = 12
AEAD_TAG_SIZE: Final = 16


class DecryptionFailed(AuthError):
    """An AEAD tag did not verify: wrong key, tampered data or wrong AAD."""


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the OS CSPRNG."""
    return os.urandom(n)


def sha3_256(data: bytes) -> bytes:
    return hashlib.sha3_256(data).digest()


# --- Ed25519 ----------------------------------------------------------------


class SigningKey:
    """An Ed25519 private key (32-byte seed) with its public key.

    ``repr`` never shows the seed. Signing is deterministic (RFC 8032).
    """

    __slots__ = ("_public", "_secret", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != ED25519_SEED_SIZE:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        self._seed = bytes(seed)
        self._public: bytes = public
        self._secret: bytes = secret

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(random_bytes(ED25519_SEED_SIZE))

    @property
    def public_key(self) -> bytes:
        return self._public

    def seed(self) -> bytes:
        """The 32-byte private seed, for storage and key recovery only."""
        return self._seed

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        signed: bytes = sodium.crypto_sign(message, self._secret)
        return signed[:ED25519_SIGNATURE_SIZE]

    def x25519_private_key(self) -> bytes:
        """The X25519 private key that belongs to this Ed25519 key (D4)."""
        result: bytes = sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret)
        return result

    def x25519_public_key(self) -> bytes:
        return ed25519_pk_to_x25519(self._public)

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()})"


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is libsodium-valid for ``message`` under ``public_key``.

    Wrong lengths are simply invalid; the caller decides which error to raise.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE or len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def ed25519_pk_to_x25519(public_key: bytes) -> bytes:
    """The X25519 public key for an Ed25519 public key (libsodium's map)."""
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise MalformedError("an Ed25519 public key is 32 bytes")
    try:
        result: bytes = sodium.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
        raise MalformedError("not a usable Ed25519 public key") from exc
    return result


# --- X25519 -----------------------------------------------------------------

# The little-endian u-coordinates of points of small order on Curve25519 and
# on its twist (libsodium's blocklist). The top bit is ignored on input
# (RFC 7748 §5), so it is cleared before comparing; non-canonical encodings
# (u >= p) of the same points are listed as well.
_SMALL_ORDER: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def is_small_order_x25519(public_key: bytes) -> bool:
    masked = public_key[:31] + bytes([public_key[31] & 0x7F])
    return masked in _SMALL_ORDER


def x25519_public_key(private_key: bytes) -> bytes:
    if len(private_key) != X25519_KEY_SIZE:
        raise ValueError("an X25519 private key is 32 bytes")
    result: bytes = sodium.crypto_scalarmult_base(private_key)
    return result


class X25519KeyPair:
    """An X25519 key pair, typically ephemeral."""

    __slots__ = ("private_key", "public_key")

    def __init__(self, private_key: bytes) -> None:
        self.private_key = private_key
        self.public_key = x25519_public_key(private_key)

    @classmethod
    def generate(cls) -> X25519KeyPair:
        return cls(random_bytes(X25519_KEY_SIZE))

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self.public_key.hex()})"


def x25519(private_key: bytes, public_key: bytes) -> bytes:
    """The X25519 shared secret; refuses small-order keys and all-zero results."""
    if len(private_key) != X25519_KEY_SIZE or len(public_key) != X25519_KEY_SIZE:
        raise MalformedError("X25519 keys are 32 bytes")
    if is_small_order_x25519(public_key):
        raise MalformedError("X25519 public key has small order")
    try:
        shared: bytes = sodium.crypto_scalarmult(private_key, public_key)
    except nacl.exceptions.RuntimeError as exc:
        # libsodium refuses an all-zero result itself.
        raise MalformedError("X25519 produced an all-zero shared secret") from exc
    if not any(shared):
        raise MalformedError("X25519 produced an all-zero shared secret")
    return shared


# --- KDF and AEADs ----------------------------------------------------------


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aes256gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``ciphertext || tag``."""
    if len(key) != 32 or len(nonce) != GCM_NONCE_SIZE:
        raise ValueError("AES-256-GCM takes a 32-byte key and a 12-byte nonce")
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aes256gcm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(key) != 32:
        raise ValueError("AES-256-GCM takes a 32-byte key")
    if len(nonce) != GCM_NONCE_SIZE:
        raise MalformedError("AES-256-GCM nonce must be 12 bytes")
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionFailed("ciphertext shorter than its tag")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise DecryptionFailed("AES-256-GCM authentication failed") from exc


def chacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def chacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionFailed("ciphertext shorter than its tag")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise DecryptionFailed("ChaCha20-Poly1305 authentication failed") from exc


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
