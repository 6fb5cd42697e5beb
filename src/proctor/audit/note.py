"""C2SP signed notes, tlog checkpoints and tlog-proof bundles (Ed25519 only).

Formats (https://c2sp.org/signed-note, /tlog-checkpoint, /tlog-proof):

- A signed note is a text ending in a newline, a blank line, then one or more lines
  ``— <key name> <base64(4-byte key id || signature)>``. The signature covers the text's
  UTF-8 bytes including its final newline. The text may contain blank lines itself: the
  *last* blank line separates it from the signatures.
- A checkpoint is a note whose text is three lines: the origin, the decimal tree size and
  the base64 root hash, then optional extension lines.
- A tlog-proof bundles a leaf index, its inclusion path and the signed checkpoint, so that
  anyone holding the log's public key can check inclusion offline.

Parsing is strict on purpose: a note, checkpoint or proof has exactly one accepted spelling
(canonical base64, no leading zeros), so two byte strings never claim the same thing and a
tampered copy cannot slip through a lenient parser. Untrusted input that fails raises
``AuditIntegrityError``; bad arguments from our own code raise ``InvalidRequestError``.
This module does no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from proctor.audit.merkle import HASH_SIZE, verify_inclusion
from proctor.errors import AuditIntegrityError, InvalidRequestError

__all__ = [
    "MAX_SIGNATURES",
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "TlogProof",
    "add_signature",
    "ed25519_key_id",
    "format_tlog_proof",
    "open_note",
    "parse_tlog_proof",
    "parse_vkey",
    "sign_note",
    "verifiers_from_vkeys",
    "verify_tlog_proof",
    "vkey",
]

ED25519_TYPE = b"\x01"  # signed-note signature type byte for Ed25519.
KEY_ID_SIZE = 4
ED25519_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
MAX_SIGNATURES = 100
"""Most signature lines ``open_note`` reads: the spec asks for at least 16; Go allows 100."""
TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
_SIG_PREFIX = "\N{EM DASH} "
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # ASCII only; str.isdigit would accept "٣".
_MAX_PROOF_HASHES = 64  # A tree of fewer than 2**64 leaves has at most 64 path hashes.

Verifiers = Mapping[tuple[str, bytes], bytes]
"""Trusted keys: ``(key name, 4-byte key id) -> 32-byte Ed25519 public key``."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Decode standard padded base64, or return None unless ``text`` is its canonical form."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters.
        return None
    # Python ignores non-zero trailing bits ("AB==" decodes like "AA=="); re-encoding
    # rejects such aliases, so each value has a single accepted spelling.
    return raw if _b64(raw) == text else None


def _has_control(text: str) -> bool:
    """Return whether ``text`` holds a character the signed-note spec forbids (< U+0020)."""
    return any(ord(c) < 0x20 and c != "\n" for c in text)


def _valid_name(name: str) -> bool:
    """Key names are non-empty with no Unicode space, '+' or control character (signed-note)."""
    return bool(name) and "+" not in name and not any(c.isspace() or ord(c) < 0x20 for c in name)


def _utf8(text: str) -> bytes | None:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # Lone surrogates: not valid UTF-8, so not a valid note.
        return None


def ed25519_key_id(name: str, public_key: bytes) -> bytes:
    """Return the signed-note key id, SHA-256(name || 0x0A || 0x01 || public key)[:4].

    The name and type byte are hashed in so that the same key under another name or
    algorithm gets another id (C2SP signed-note, "Signatures").

    Args:
        name: The key name.
        public_key: The 32-byte Ed25519 public key.

    Returns:
        The 4-byte key id.

    Raises:
        InvalidRequestError: The name is not a valid key name or the key is not 32 bytes.
    """
    if not _valid_name(name):
        raise InvalidRequestError(
            f"invalid key name {name!r}: it must be non-empty, without spaces or '+'",
            field="name",
        )
    if len(public_key) != ED25519_KEY_SIZE:
        raise InvalidRequestError(
            f"an Ed25519 public key is 32 bytes, got {len(public_key)}", field="public_key"
        )
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + public_key).digest()[:KEY_ID_SIZE]


def vkey(name: str, public_key: bytes) -> str:
    """Return the verifier key text ``<name>+<hex key id>+<base64(0x01 || public key)>``.

    Raises:
        InvalidRequestError: As ``ed25519_key_id``.
    """
    key_id = ed25519_key_id(name, public_key)
    return f"{name}+{key_id.hex()}+{_b64(ED25519_TYPE + public_key)}"


def parse_vkey(text: str) -> tuple[str, bytes, bytes]:
    """Parse a verifier key made by ``vkey`` (or Go's ``note.NewVerifier`` format).

    Args:
        text: The verifier key text.

    Returns:
        ``(name, key_id, public_key)``.

    Raises:
        InvalidRequestError: The text is malformed, not an Ed25519 key, or its key id does
            not match its name and key.
    """

    def bad(reason: str) -> InvalidRequestError:
        return InvalidRequestError(f"invalid verifier key: {reason}", field="vkey")

    # Split only twice: base64 may itself contain '+', and names may not.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise bad("expected <name>+<key id>+<key>")
    name, id_hex, key_b64 = parts
    if not _valid_name(name):
        raise bad(f"invalid key name {name!r}")
    if not re.fullmatch(r"[0-9a-fA-F]{8}", id_hex):
        raise bad("the key id is not 8 hex digits")
    key = _unb64(key_b64)
    if key is None:
        raise bad("the key is not canonical base64")
    if key[:1] != ED25519_TYPE or len(key) != 1 + ED25519_KEY_SIZE:
        raise bad("not an Ed25519 key (type 0x01, 32 bytes)")
    public_key = key[1:]
    key_id = bytes.fromhex(id_hex)
    # The id is derived, not chosen: a mismatch means a typo or a spliced key.
    if key_id != ed25519_key_id(name, public_key):
        raise bad("the key id does not match the name and key")
    return name, key_id, public_key


def verifiers_from_vkeys(vkeys: Iterable[str]) -> dict[tuple[str, bytes], bytes]:
    """Return the ``open_note`` verifier mapping for some verifier keys.

    Raises:
        InvalidRequestError: A verifier key is malformed.
    """
    out: dict[tuple[str, bytes], bytes] = {}
    for text in vkeys:
        name, key_id, public_key = parse_vkey(text)
        out[name, key_id] = public_key
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A tlog checkpoint: the log's origin, tree size and root hash (C2SP tlog-checkpoint).

    Raises:
        InvalidRequestError: At construction, if a field cannot be written as a checkpoint.
    """

    origin: str
    """The log's identity; non-empty, one line."""
    size: int
    """The number of leaves in the tree."""
    root: bytes
    """The RFC 9162 root hash at ``size``."""
    extensions: tuple[str, ...] = ()
    """Opaque extra lines; non-empty each. The spec discourages them (monitors cannot audit)."""

    def __post_init__(self) -> None:
        for i, line in enumerate((self.origin, *self.extensions)):
            if not line or "\n" in line or _has_control(line):
                field = "origin" if i == 0 else f"extensions[{i - 1}]"
                raise InvalidRequestError(f"checkpoint line {line!r} is not one line", field=field)
        if isinstance(self.size, bool) or not 0 <= self.size < 2**64:
            raise InvalidRequestError(f"invalid tree size {self.size!r}", field="size")
        if len(self.root) != HASH_SIZE:
            raise InvalidRequestError(f"root is {len(self.root)} bytes, not 32", field="root")

    def body(self) -> str:
        """Return the note text: origin, size, base64 root and extensions, one per line."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint note text (the text ``open_note`` returns), strictly.

        Args:
            body: The note text, ending in a newline.

        Returns:
            The checkpoint.

        Raises:
            AuditIntegrityError: The text is not exactly a checkpoint.
        """

        def bad(reason: str) -> AuditIntegrityError:
            return AuditIntegrityError(f"malformed checkpoint: {reason}", field="checkpoint")

        if not body.endswith("\n"):
            raise bad("the text does not end in a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise bad("fewer than three lines")
        origin, size, root_b64, *extensions = lines
        if not _DECIMAL.fullmatch(size):
            raise bad(f"tree size {size!r} is not a decimal without leading zeros")
        root = _unb64(root_b64)
        if root is None or len(root) != HASH_SIZE:
            raise bad("the root is not a canonical base64 32-byte hash")
        try:
            return cls(origin=origin, size=int(size), root=root, extensions=tuple(extensions))
        except InvalidRequestError as exc:
            raise bad(exc.message) from exc


def _check_signer(name: str, public_key: bytes, sig: bytes, text: bytes) -> str:
    """Check a fresh signature and return its signature line."""
    key_id = ed25519_key_id(name, public_key)
    # Verify what we just signed: a signer whose key is not ``public_key`` would otherwise
    # publish a note under a key id nobody can verify, and we would only learn it later.
    if len(sig) != ED25519_SIG_SIZE or not _ed25519_ok(public_key, text, sig):
        raise InvalidRequestError(
            f"the signer's signature does not verify with the public key of {name!r}",
            field="sign",
        )
    return f"{_SIG_PREFIX}{name} {_b64(key_id + sig)}\n"


def _ed25519_ok(public_key: bytes, message: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, sig)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def sign_note(text: str, name: str, sign: Callable[[bytes], bytes], public_key: bytes) -> str:
    """Sign ``text`` and return the signed note: text, blank line, one signature line.

    Args:
        text: The note text; must end in a newline and hold no control character but
            newlines.
        name: The key name (for a checkpoint, usually the log's origin).
        sign: Returns the 64-byte Ed25519 signature of its argument.
        public_key: The signer's 32-byte public key, for the key id and a self-check.

    Returns:
        The signed note.

    Raises:
        InvalidRequestError: The text, name or key is invalid, or the signature does not
            verify with ``public_key``.
    """
    data = _utf8(text)
    if data is None or not text.endswith("\n") or _has_control(text):
        raise InvalidRequestError(
            "note text must be UTF-8, end in a newline and have no control characters",
            field="text",
        )
    return text + "\n" + _check_signer(name, public_key, sign(data), data)


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and ``(name, key_id, signature)`` per line."""

    def bad(reason: str) -> AuditIntegrityError:
        return AuditIntegrityError(f"malformed signed note: {reason}", field="note")

    if _utf8(note) is None or _has_control(note):
        raise bad("not UTF-8 text without control characters")
    # The text may contain blank lines; signature lines never do, so the last blank line
    # is the separator (signed-note, "Format").
    split = note.rfind("\n\n")
    if split < 0:
        raise bad("no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise bad("no signature lines, or the last one lacks its newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise bad(f"more than {MAX_SIGNATURES} signatures")
    sigs: list[tuple[str, bytes, bytes]] = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise bad(f"signature line {line!r} does not start with an em dash and a space")
        name, _, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        blob = _unb64(sig_b64)
        if not _valid_name(name) or blob is None or len(blob) <= KEY_ID_SIZE:
            raise bad(f"signature line {line!r} is not '<name> <base64 key id + signature>'")
        sigs.append((name, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:]))
    return text, sigs


def add_signature(note: str, name: str, sign: Callable[[bytes], bytes], public_key: bytes) -> str:
    """Add one more signature (a second log key, a co-signer) to a signed note.

    Existing signatures are kept as they are and not verified here: open the note with
    ``open_note`` first if you are vouching for them.

    Args:
        note: A well-formed signed note.
        name: The new key's name.
        sign: Returns the 64-byte Ed25519 signature of its argument.
        public_key: The new key's 32-byte public key.

    Returns:
        The note with the new signature line appended.

    Raises:
        AuditIntegrityError: ``note`` is malformed.
        InvalidRequestError: The key already signed the note, or as ``sign_note``.
    """
    text, sigs = _split_note(note)
    key_id = ed25519_key_id(name, public_key)
    if any((n, k) == (name, key_id) for n, k, _ in sigs):
        raise InvalidRequestError(f"key {name}+{key_id.hex()} already signed this note")
    data = text.encode()
    return note + _check_signer(name, public_key, sign(data), data)


def open_note(note: str, verifiers: Verifiers) -> tuple[str, list[tuple[str, bytes]]]:
    """Verify a signed note and return its text.

    Per C2SP signed-note: signatures from unknown keys are ignored (they may be witnesses or
    a rotated key); every signature from a known key must verify; at least one must.

    Args:
        note: The signed note.
        verifiers: Trusted keys, ``(name, key_id) -> public key``; see
            ``verifiers_from_vkeys``.

    Returns:
        ``(text, verified)``: the note text (with its final newline) and the distinct
        ``(name, key_id)`` pairs whose signatures verified, in note order.

    Raises:
        AuditIntegrityError: The note is malformed, a known key's signature is bad, or no
            known key signed it.
        InvalidRequestError: A public key in ``verifiers`` is not 32 bytes.
    """
    text, sigs = _split_note(note)
    data = text.encode()
    verified: list[tuple[str, bytes]] = []
    for name, key_id, sig in sigs:
        public_key = verifiers.get((name, key_id))
        if public_key is None:
            continue
        if len(public_key) != ED25519_KEY_SIZE:
            raise InvalidRequestError(f"verifier key for {name!r} is not 32 bytes")
        # A bad signature from a trusted key means tampering or a broken signer: reject
        # the whole note (the spec says SHOULD; we fail closed). Repeats are each checked,
        # unlike Go, which skips a repeated key without verifying the second line.
        if len(sig) != ED25519_SIG_SIZE or not _ed25519_ok(public_key, data, sig):
            raise AuditIntegrityError(
                f"signature by {name}+{key_id.hex()} does not verify", field="note"
            )
        if (name, key_id) not in verified:
            verified.append((name, key_id))
    if not verified:
        raise AuditIntegrityError(
            "the note has no signature from a trusted key",
            field="note",
            hint="check the log's verifier key (vkey) you are trusting",
        )
    return text, verified


@dataclass(frozen=True, slots=True, kw_only=True)
class TlogProof:
    """A parsed C2SP tlog-proof: an entry's index, inclusion path and signed checkpoint."""

    index: int
    """The zero-based index of the entry in the log."""
    hashes: tuple[bytes, ...]
    """The RFC 9162 inclusion path, leaf's sibling first."""
    checkpoint: str
    """The signed checkpoint note, verbatim; not yet verified."""
    extra: bytes | None = None
    """Opaque, *unauthenticated* application data; never trust it implicitly."""


def format_tlog_proof(
    index: int,
    proof_hashes: Sequence[bytes],
    signed_checkpoint_note: str,
    *,
    extra: bytes | None = None,
) -> str:
    """Return a C2SP tlog-proof@v1 bundle.

    Layout: ``c2sp.org/tlog-proof@v1``, an optional ``extra <base64>`` line, ``index <n>``,
    one base64 hash per line, a blank line, then the signed checkpoint verbatim.

    Args:
        index: The entry's index.
        proof_hashes: The inclusion path for ``index`` at the checkpoint's size.
        signed_checkpoint_note: The signed checkpoint note.
        extra: Optional opaque bytes (the spec's ``extra`` line); unauthenticated.

    Returns:
        The proof text.

    Raises:
        InvalidRequestError: The index is negative, a hash is not 32 bytes, or the note is
            malformed.
    """
    if isinstance(index, bool) or index < 0:
        raise InvalidRequestError(f"invalid entry index {index!r}", field="index")
    if any(len(h) != HASH_SIZE for h in proof_hashes):
        raise InvalidRequestError("every proof hash must be 32 bytes", field="proof_hashes")
    try:
        _split_note(signed_checkpoint_note)
    except AuditIntegrityError as exc:
        raise InvalidRequestError(exc.message, field="signed_checkpoint_note") from exc
    head = [TLOG_PROOF_HEADER]
    if extra is not None:
        head.append(f"extra {_b64(extra)}")
    head.append(f"index {index}")
    head.extend(_b64(h) for h in proof_hashes)
    return "".join(line + "\n" for line in head) + "\n" + signed_checkpoint_note


def parse_tlog_proof(text: str) -> TlogProof:
    """Parse a C2SP tlog-proof@v1 bundle strictly (nothing is verified yet).

    Args:
        text: The proof text.

    Returns:
        The parsed proof; pass it to ``verify_tlog_proof``.

    Raises:
        AuditIntegrityError: The text is not exactly a tlog-proof.
    """

    def bad(reason: str) -> AuditIntegrityError:
        return AuditIntegrityError(f"malformed tlog-proof: {reason}", field="proof")

    # Everything before the first blank line is the header; the rest is the checkpoint,
    # which may itself contain blank lines.
    head_text, sep, note = text.partition("\n\n")
    if not sep or not note:
        raise bad("no blank line followed by a checkpoint")
    head = head_text.split("\n")
    if head[0] != TLOG_PROOF_HEADER:
        raise bad(f"the first line is not {TLOG_PROOF_HEADER}")
    pos, extra = 1, None
    if len(head) > 1 and head[1].startswith("extra "):
        extra = _unb64(head[1][len("extra ") :])
        if extra is None:
            raise bad("the extra data is not canonical base64")
        pos = 2
    index_line = head[pos] if pos < len(head) else ""
    if not index_line.startswith("index ") or not _DECIMAL.fullmatch(index_line[6:]):
        raise bad("no 'index <n>' line with a decimal without leading zeros")
    hashes: list[bytes] = []
    for line in head[pos + 1 :]:
        h = _unb64(line)
        if h is None or len(h) != HASH_SIZE:
            raise bad(f"proof line {line!r} is not a canonical base64 32-byte hash")
        hashes.append(h)
    if len(hashes) > _MAX_PROOF_HASHES:
        raise bad(f"more than {_MAX_PROOF_HASHES} proof hashes")
    _split_note(note)  # Well-formed now; the signatures are checked by verify_tlog_proof.
    return TlogProof(index=int(index_line[6:]), hashes=tuple(hashes), checkpoint=note, extra=extra)


def verify_tlog_proof(
    proof: TlogProof | str, leaf: bytes, *, origin: str, verifiers: Verifiers
) -> Checkpoint:
    """Check a tlog-proof offline: trusted checkpoint signature, origin, then inclusion.

    Args:
        proof: The proof, parsed or as text.
        leaf: The leaf hash of the entry (``merkle.leaf_hash(entry)``).
        origin: The log origin the caller expects; a checkpoint from another log fails.
        verifiers: Trusted log keys, as for ``open_note``.

    Returns:
        The verified checkpoint the entry is included in.

    Raises:
        AuditIntegrityError: Any check fails.
    """
    parsed = parse_tlog_proof(proof) if isinstance(proof, str) else proof
    text, _ = open_note(parsed.checkpoint, verifiers)
    checkpoint = Checkpoint.parse(text)
    # The origin binds the checkpoint to one log: a validly signed checkpoint of another
    # log by a shared key must not vouch for this one's entries.
    if checkpoint.origin != origin:
        raise AuditIntegrityError(
            f"checkpoint origin {checkpoint.origin!r} is not {origin!r}", field="checkpoint"
        )
    verify_inclusion(leaf, parsed.index, checkpoint.size, parsed.hashes, checkpoint.root)
    return checkpoint
