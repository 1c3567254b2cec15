"""Ed25519 key files for signed runs: PEM, PKCS8 private keys and SubjectPublicKeyInfo public
keys, the same files `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write.

A key is named by its id, `ed25519:` + the SHA-256 of its 32 raw public bytes: that is what a
signature records and what a user compares with the id printed by `keygen`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from esper_es.errors import KeyFileError, StorageError

_MAX_KEY_FILE = 64 * 1024
_PRIVATE_MARK = b"PRIVATE KEY-----"


def key_id(public: Ed25519PublicKey) -> str:
    """`ed25519:<sha256 of the raw public key>`: how signatures and messages name a key."""
    return "ed25519:" + hashlib.sha256(raw_public(public)).hexdigest()


def raw_public(public: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_raw(data: bytes) -> Ed25519PublicKey:
    """A public key from its 32 raw bytes (ValueError if they are not one)."""
    return Ed25519PublicKey.from_public_bytes(data)


def _read(path: str | Path) -> bytes:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE + 1)  # bounded: a device or a huge file is not a key
    except FileNotFoundError:
        raise KeyFileError(str(p), "no such file") from None
    except IsADirectoryError:
        raise KeyFileError(str(p), "is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(str(p), f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(str(p), "too large to be a PEM key")
    return data


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM (PKCS8, unencrypted) file; KeyFileError otherwise."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            str(path), "the private key is encrypted; esper-es reads unencrypted PKCS8 keys"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " (this is a public key; sign with the private one)" if b"PUBLIC KEY" in data else ""
        raise KeyFileError(str(path), f"not a PEM private key{hint}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(str(path), f"a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM (SubjectPublicKeyInfo) file; KeyFileError otherwise."""
    data = _read(path)
    if _PRIVATE_MARK in data:
        raise KeyFileError(
            str(path),
            "this is a private key; verify with the public key (keygen wrote it as <key>.pub)",
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(str(path), "not a PEM public key (SubjectPublicKeyInfo)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(str(path), f"a {type(key).__name__}, not an Ed25519 key")
    return key


def public_path(private: Path) -> Path:
    """Where `keygen` writes the public key of the private key at `private`."""
    return private.with_name(private.name + ".pub")


def generate_keypair(out: str | Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new key pair: `out` (private, mode 0600) and `out.pub`; return both and its id."""
    private_path = Path(out)
    pub_path = public_path(private_path)
    for p in (private_path, pub_path):
        if p.exists() and not force:
            raise KeyFileError(str(p), "already exists; pass --force to replace it")
        if p.is_dir():
            raise KeyFileError(str(p), "is a directory")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for p, data, mode in ((private_path, private_pem, 0o600), (pub_path, public_pem, 0o644)):
        try:
            _write(p, data, mode)
        except OSError as exc:  # the file system refused: not a bad key (exit 1)
            raise StorageError(str(p), f"cannot write the key: {exc.strerror or exc}") from None
    return private_path, pub_path, key_id(key.public_key())


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode (a private key is never readable by others, not even
    # briefly), beside the target and renamed into place.
    tmp = path.with_name(path.name + ".writing")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
