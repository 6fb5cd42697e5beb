"""The signing keyring: Ed25519 keys with ids and validity periods.

Keys live in ``<home>/keys/``: one PKCS#8 PEM file per private key (mode 0600, written with
``cryptography`` so standard tools can read it) and ``keyring.json`` with each key's id,
public key, creation time and end of validity. Rotation makes a new current key and closes
the old one's validity; old public keys stay, so old events keep verifying.

Several processes may change one keyring at once (the workers of ``proctor serve --workers N``
each open the home, and rotate it when ``[keys] rotate_every_days`` says so; two ``proctor keys
rotate``; two ``proctor init``). Every change is a read-modify-write of keyring.json, so it
runs under an exclusive ``flock`` on ``keys/keyring.lock`` and decides *under the lock*
(``rotate_if_due``, ``create_first``): without it two openers both rotated, and the one that
wrote keyring.json last dropped the other's key, whose events then failed verification as
``unknown_key``. keyring.json is replaced atomically (a temporary file of its own, fsynced,
then ``os.replace``), so a reader sees the old index or the new one, never a part.

Signing itself uses PyNaCl (libsodium): on the machines we measured it signs in ~41 µs and
verifies in ~87 µs, against ~53 µs / ~165 µs for ``cryptography``; every governed action
signs several events, and full verification checks every one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proctor.audit.events import UNSIGNED, KeyInfo
from proctor.errors import ConfigError

if sys.platform != "win32":
    import fcntl

__all__ = [
    "ROTATION_GRACE",
    "KeyEntry",
    "Keyring",
    "KeyringSigner",
    "LocalSigner",
    "NoSigner",
    "key_id_for",
]

ROTATION_GRACE = timedelta(minutes=5)
"""How long a rotated-out key may still sign: the window for other processes to reload."""


def key_id_for(public_key: bytes) -> str:
    """Return the event key id: ``ed25519:`` and the first 16 hex digits of SHA-256(key)."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyEntry:
    """One key of the keyring (public part and metadata)."""

    key_id: str
    public_key: bytes
    created_at: datetime
    not_after: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in keyring.json."""
        return {
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "created_at": self.created_at.isoformat(),
            "not_after": self.not_after.isoformat() if self.not_after else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyEntry:
        """Parse a keyring.json entry."""
        return cls(
            key_id=d["key_id"],
            public_key=base64.b64decode(d["public_key"]),
            created_at=datetime.fromisoformat(d["created_at"]),
            not_after=datetime.fromisoformat(d["not_after"]) if d.get("not_after") else None,
        )

    def info(self) -> KeyInfo:
        """Return the verification view of this key."""
        return KeyInfo(self.public_key, self.created_at, self.not_after)


class LocalSigner:
    """Signs with a private key held in memory (the ``Signer`` port)."""

    __slots__ = ("_key_id", "_public", "_sk")

    def __init__(self, seed: bytes, *, public_keys: Mapping[str, bytes] | None = None) -> None:
        self._sk = nacl.signing.SigningKey(seed)
        pub = bytes(self._sk.verify_key)
        self._key_id = key_id_for(pub)
        self._public = dict(public_keys or {})
        self._public[self._key_id] = pub

    @classmethod
    def generate(cls) -> LocalSigner:
        """Return a signer with a fresh random key (for tests and throwaway instances)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def key_id(self) -> str:
        """The signing key's id."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The signing key's raw public key."""
        return bytes(self._sk.verify_key)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._sk.sign(data).signature

    def public_keys(self) -> Mapping[str, bytes]:
        """Return every known public key by id."""
        return dict(self._public)


class NoSigner:
    """Writes events without a signature (``key_id`` ``unsigned``, empty ``signature``).

    For an in-memory instance that wants the hash chain and the Merkle tree but not the cost
    of Ed25519 (``Proctor.in_memory(audit_signatures=False)``): such a log signs no
    checkpoints, and only its own keyring (``public_keys``) accepts its events.
    """

    __slots__ = ()

    @property
    def key_id(self) -> str:
        """``unsigned``."""
        return UNSIGNED

    def sign(self, data: bytes) -> bytes:
        """Return no signature."""
        return b""

    def public_keys(self) -> Mapping[str, bytes]:
        """``{"unsigned": b""}``: the id its events carry."""
        return {UNSIGNED: b""}


class Keyring:
    """Keys on disk under a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index = directory / "keyring.json"

    def exists(self) -> bool:
        """Whether the keyring has been created."""
        return self._index.is_file()

    def entries(self) -> list[KeyEntry]:
        """Return every key, oldest first.

        Raises:
            ConfigError: if keyring.json is missing or unreadable.
        """
        try:
            data = json.loads(self._index.read_text())
            return [KeyEntry.from_dict(d) for d in data["keys"]]
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no keyring at {self._index}",
                field="keys",
                hint="Run `proctor init` for a new instance. For one whose database holds"
                " events, restore keys/ from its backup instead (docs/operations.md): a new"
                " keyring cannot verify the events already signed.",
            ) from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"keyring {self._index} is unreadable: {exc}", field="keys") from exc

    def current(self) -> KeyEntry:
        """Return the newest key."""
        return self.entries()[-1]

    def previous(self, key_id: str) -> str | None:
        """Return the id of the key ``key_id`` replaced, or None for the first key.

        Read back after a rotation rather than before it: another process may have rotated
        in between, and entries are only ever appended.

        Raises:
            ConfigError: if keyring.json is unreadable or has no key ``key_id``.
        """
        ids = [e.key_id for e in self.entries()]
        if key_id not in ids:
            raise ConfigError(f"keyring {self._index} has no key {key_id}", field="keys")
        at = ids.index(key_id)
        return ids[at - 1] if at else None

    def key_infos(self) -> dict[str, KeyInfo]:
        """Return verification info for every key."""
        return {e.key_id: e.info() for e in self.entries()}

    def create(self, now: datetime, *, grace: timedelta = ROTATION_GRACE) -> KeyEntry:
        """Create a new key and make it current.

        The previous key stays valid for ``grace`` more, so processes that still hold it
        (they reload the keyring within a second) do not sign events verification rejects.
        Safe against other processes changing the keyring at the same time (module docstring).
        """
        with self._locked():
            return self._append(self._entries_if_any(), now, grace=grace)

    def create_first(self, now: datetime) -> KeyEntry | None:
        """Create the first key unless the keyring exists; return it, or None if it existed.

        Decided under the keyring lock, so of several ``proctor init`` at once one creates the
        key and the others find it (each used to write a key of its own, and all but the last
        were left as orphan .pem files).
        """
        with self._locked():
            if self.exists():
                return None
            return self._append([], now, grace=ROTATION_GRACE)

    def rotate_if_due(
        self, now: datetime, *, every: timedelta, grace: timedelta = ROTATION_GRACE
    ) -> KeyEntry | None:
        """Rotate if the current key is ``every`` old or older; return the new key, or None.

        The age is checked again under the keyring lock, so of several processes opening an
        instance whose key is due, exactly one rotates and the others load its new key.

        NOTE(keys): it records no ``keys.rotated`` event: the keyring has no audit log, and
        ``bootstrap.open_instance`` rotates before it builds one, so that the new key signs
        from the first event on. The caller that gets the new key records the event once the
        log is open (with ``"scheduled": true``), as ``Proctor.rotate_key`` does for a manual
        rotation.

        Raises:
            ConfigError: if keyring.json is missing or unreadable.
        """
        if now - self.current().created_at < every:
            return None  # the common case, decided without the lock (or write access)
        with self._locked():
            entries = self.entries()
            if now - entries[-1].created_at < every:
                return None  # another process rotated while this one waited for the lock
            return self._append(entries, now, grace=grace)

    def _entries_if_any(self) -> list[KeyEntry]:
        return self.entries() if self.exists() else []

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive ``flock`` on keyring.lock while changing the keyring.

        Other processes' and threads' changes wait; readers do not take it (keyring.json is
        replaced atomically). Windows has no ``flock``: there changes are not serialised
        across processes.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        if sys.platform == "win32":
            yield
            return
        # One open file description per holder: flocks of two descriptions conflict even in
        # one process, so threads are serialised too. Closing the descriptor releases it.
        fd = os.open(
            self.directory / "keyring.lock",
            os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _append(self, entries: list[KeyEntry], now: datetime, *, grace: timedelta) -> KeyEntry:
        """Write a new private key, then the index with it as current.

        The caller holds the lock and passes the entries it read under it.
        """
        private = Ed25519PrivateKey.generate()
        pub = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        entry = KeyEntry(key_id=key_id_for(pub), public_key=pub, created_at=now)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self._private_path(entry.key_id)
        # Create with 0600 from the start: no window in which the key is world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            # On disk before the index names it: after a power loss an index whose current
            # key has no private file would keep the instance from opening.
            os.fsync(fh.fileno())
        if entries:
            last = entries[-1]
            entries[-1] = KeyEntry(
                key_id=last.key_id,
                public_key=last.public_key,
                created_at=last.created_at,
                not_after=now + grace,
            )
        entries.append(entry)
        self._write_index(entries)
        # The retired keys' private parts go: nothing reads them (a signer loads the current
        # key; verifying needs only public keys), and one left on disk could sign events
        # that verify, backdated into its validity. Processes that hold the old key in memory
        # keep signing with it for the grace above, until they reload the keyring.
        for old in entries[:-1]:
            self._private_path(old.key_id).unlink(missing_ok=True)
        _fsync_directory(self.directory)
        return entry

    def _write_index(self, entries: list[KeyEntry]) -> None:
        """Replace keyring.json atomically and durably."""
        data = (json.dumps({"keys": [e.as_dict() for e in entries]}, indent=2) + "\n").encode()
        # NOTE(keys): a name of its own, not tempfile.mkstemp: mkstemp creates 0600, and
        # keyring.json (public keys only) keeps the umask's mode it always had.
        tmp = self.directory / f".keyring.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                os.fsync(fh.fileno())  # the content before the rename that publishes it
            os.replace(tmp, self._index)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)  # the rename itself survives a power loss

    def signer(self) -> KeyringSigner:
        """Return a signer that follows rotations of this keyring.

        Raises:
            ConfigError: if the private key file is missing or unreadable.
        """
        return KeyringSigner(self)

    def local_signer(self) -> LocalSigner:
        """Return a signer for the current key that knows every public key.

        Raises:
            ConfigError: if the private key file is missing or unreadable.
        """
        entries, path, pem = self._current_pem()
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except ValueError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc}", field="keys") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key", field="keys")
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return LocalSigner(seed, public_keys={e.key_id: e.public_key for e in entries})

    def _current_pem(self) -> tuple[list[KeyEntry], Path, bytes]:
        """The entries, and the current key's private file and bytes.

        A rotation deletes the retired key's file (``_append``): one that lands between
        reading the index and the file is met by reading both again, once.
        """
        entries = self.entries()
        path = self._private_path(entries[-1].key_id)
        try:
            return entries, path, path.read_bytes()
        except FileNotFoundError:
            entries = self.entries()
            path = self._private_path(entries[-1].key_id)
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc}", field="keys") from exc
        try:
            return entries, path, path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc}", field="keys") from exc

    def payload_key(self) -> bytes:
        """Return the instance's payload-hash secret, creating it on first use.

        ``keys/payload-hmac.key`` (32 random bytes, mode 0600) keys the ``payload_hash`` of
        steps whose action masks params (``hmac-sha256:``), so the log alone cannot be used to
        test guesses of a masked value. It never goes into the log or an export; keep it with
        the private keys (replicas sharing a database share it, as they share keys/).

        Raises:
            ConfigError: if the file cannot be read or created, or is not 32 bytes.
        """
        path = self.directory / "payload-hmac.key"
        try:
            try:
                key = path.read_bytes()
            except FileNotFoundError:
                key = self._create_payload_key(path)
        except OSError as exc:
            raise ConfigError(f"cannot read or create {path}: {exc}", field="keys") from exc
        if len(key) != 32:
            raise ConfigError(f"{path} is not a 32-byte key", field="keys")
        return key

    def _create_payload_key(self, path: Path) -> bytes:
        """Write a new key under a name of its own, then link it in: the first one wins."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".payload.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                os.fsync(fh.fileno())
            # A link never replaces: of two processes creating it at once, both read the
            # one that was linked first (a reader never sees a partly written file).
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_directory(self.directory)
        return path.read_bytes()

    def _private_path(self, key_id: str) -> Path:
        return self.directory / (key_id.replace(":", "-") + ".pem")

    def mtime(self) -> float:
        """Return keyring.json's modification time (changes on rotation)."""
        return self._index.stat().st_mtime


def _fsync_directory(directory: Path) -> None:
    if sys.platform == "win32":
        return  # directories cannot be opened (or fsynced) there
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyringSigner:
    """The ``Signer`` port over a keyring on disk, following rotations.

    Another process (``proctor keys rotate``) may rotate the keyring while this one runs; at
    most once a second the signer looks at keyring.json's modification time and reloads.
    """

    __slots__ = ("_checked", "_keyring", "_mtime", "_signer")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._mtime = keyring.mtime()
        self._signer = keyring.local_signer()
        self._checked = time.monotonic()

    def _current(self) -> LocalSigner:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            mtime = self._keyring.mtime()
            if mtime != self._mtime:
                self._signer = self._keyring.local_signer()
                self._mtime = mtime
        return self._signer

    def snapshot(self) -> LocalSigner:
        """The signer of the current key, fixed: its ``key_id`` and ``sign`` always agree.

        Read ``key_id`` and sign through one snapshot (``proctor.audit.events.pinned``): this
        signer may reload the keyring between two calls of its own.
        """
        return self._current()

    @property
    def key_id(self) -> str:
        """The current key's id."""
        return self._current().key_id

    def sign(self, data: bytes) -> bytes:
        """Sign with the current key."""
        return self._current().sign(data)

    def public_keys(self) -> Mapping[str, bytes]:
        """Every public key of the keyring."""
        return self._current().public_keys()
