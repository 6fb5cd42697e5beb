"""Tests for proctor.audit.note: C2SP signed notes, checkpoints and tlog-proof bundles."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest

from proctor.audit.merkle import MerkleTree, leaf_hash
from proctor.audit.note import (
    TLOG_PROOF_HEADER,
    Checkpoint,
    TlogProof,
    add_signature,
    ed25519_key_id,
    format_tlog_proof,
    open_note,
    parse_tlog_proof,
    parse_vkey,
    sign_note,
    verifiers_from_vkeys,
    verify_tlog_proof,
    vkey,
)
from proctor.errors import AuditIntegrityError, InvalidRequestError

# The example key and note of Go's reference implementation (golang.org/x/mod/sumdb/note
# note_test.go). Ed25519 is deterministic, so our signer must reproduce the note exactly.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
GO_NOTE = GO_TEXT + "\n" + GO_SIG


class Key:
    """A deterministic Ed25519 test key with a name."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self.signing = nacl.signing.SigningKey(seed)
        self.public = bytes(self.signing.verify_key)

    def sign(self, data: bytes) -> bytes:
        return self.signing.sign(data).signature

    @property
    def key_id(self) -> bytes:
        # Computed here from the spec text, independently of production.
        return hashlib.sha256(self.name.encode() + b"\x0a\x01" + self.public).digest()[:4]

    @property
    def verifiers(self) -> dict[tuple[str, bytes], bytes]:
        return {(self.name, self.key_id): self.public}


GO_KEY = Key("PeterNeumann", base64.b64decode(GO_SKEY.split("+", 4)[4])[1:])
LOG = Key("example.com/log", hashlib.sha256(b"log").digest())
WITNESS = Key("witness.example", hashlib.sha256(b"witness").digest())


def _key_with_plus() -> Key:
    """Return a key whose vkey base64 holds a '+', to exercise split("+", 2)."""
    for i in range(1000):
        key = Key("plus.example", hashlib.sha256(i.to_bytes(2, "big")).digest())
        if "+" in base64.b64encode(b"\x01" + key.public).decode():
            return key
    raise AssertionError("no such key among 1000 seeds")


class TestKeyId:
    def test_matches_the_spec_formula(self):
        """The key id is SHA-256(name || 0x0A || 0x01 || key)[:4], as computed independently."""
        assert ed25519_key_id(LOG.name, LOG.public) == LOG.key_id

    def test_matches_the_go_vector(self):
        """The Go example key has id c74f20a3."""
        assert ed25519_key_id("PeterNeumann", GO_KEY.public).hex() == "c74f20a3"

    @pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\there", "nbsp\u00a0x"])
    def test_rejects_invalid_names(self, name):
        """Names must be non-empty and free of Unicode spaces and '+'."""
        with pytest.raises(InvalidRequestError):
            ed25519_key_id(name, LOG.public)

    def test_rejects_a_short_key(self):
        """An Ed25519 public key is exactly 32 bytes."""
        with pytest.raises(InvalidRequestError):
            ed25519_key_id(LOG.name, LOG.public[:31])


class TestVkey:
    def test_go_vector_round_trips(self):
        """The Go verifier key parses and is reproduced byte for byte."""
        name, key_id, public = parse_vkey(GO_VKEY)

        assert (name, key_id.hex(), public) == ("PeterNeumann", "c74f20a3", GO_KEY.public)
        assert vkey(name, public) == GO_VKEY

    def test_base64_with_plus_round_trips(self):
        """A key whose base64 contains '+' survives the round trip."""
        key = _key_with_plus()
        text = vkey(key.name, key.public)

        assert text.count("+") > 2
        assert parse_vkey(text) == (key.name, key.key_id, key.public)

    def test_every_mangling_is_rejected(self):
        """Every proper substring and every one-character change of a vkey is rejected."""
        bad = {GO_VKEY[i:j] for i in range(len(GO_VKEY)) for j in range(i + 1, len(GO_VKEY) + 1)}
        bad |= {
            GO_VKEY[:i] + chr(ord(GO_VKEY[i]) + 1) + GO_VKEY[i + 1 :] for i in range(len(GO_VKEY))
        }
        bad.discard(GO_VKEY)

        for text in bad:
            with pytest.raises(InvalidRequestError):
                parse_vkey(text)

    @pytest.mark.parametrize(
        "text",
        [
            "PeterNeumann+c74f20a3",
            "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ApAc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ],
    )
    def test_rejects_malformed(self, text):
        """Missing parts, a short id, another key type or an invalid name are rejected."""
        with pytest.raises(InvalidRequestError):
            parse_vkey(text)

    def test_verifiers_from_vkeys(self):
        """verifiers_from_vkeys maps (name, key id) to the public key."""
        assert verifiers_from_vkeys([GO_VKEY]) == GO_KEY.verifiers


class TestSignNote:
    def test_reproduces_the_go_note(self):
        """Signing the Go example text with the Go example key gives the Go note exactly."""
        assert sign_note(GO_TEXT, GO_KEY.name, GO_KEY.sign, GO_KEY.public) == GO_NOTE

    def test_round_trip(self):
        """A signed note opens with its key and yields the text and the signer."""
        note = sign_note("hello\n", LOG.name, LOG.sign, LOG.public)

        assert note == "hello\n\n\u2014 example.com/log " + _b64sig(LOG, "hello\n") + "\n"
        assert open_note(note, LOG.verifiers) == ("hello\n", [(LOG.name, LOG.key_id)])

    def test_text_with_blank_lines_round_trips(self):
        """The last blank line splits text from signatures, so texts may hold blank lines."""
        text = "a\n\nb\n\n"
        note = sign_note(text, LOG.name, LOG.sign, LOG.public)

        assert open_note(note, LOG.verifiers)[0] == text

    @pytest.mark.parametrize("text", ["no final newline", "", "bell\x07\n", "cr\r\n", "\ud800\n"])
    def test_rejects_invalid_text(self, text):
        """Text without a final newline, with control characters or not UTF-8 is refused."""
        with pytest.raises(InvalidRequestError):
            sign_note(text, LOG.name, LOG.sign, LOG.public)

    def test_rejects_a_signer_that_does_not_match_the_key(self):
        """A signer whose key is not the given public key is caught before publishing."""
        with pytest.raises(InvalidRequestError, match="does not verify"):
            sign_note("x\n", LOG.name, WITNESS.sign, LOG.public)

    def test_add_signature_adds_a_second_verified_signer(self):
        """add_signature appends a line; both keys then verify."""
        note = sign_note("x\n", LOG.name, LOG.sign, LOG.public)

        both = add_signature(note, WITNESS.name, WITNESS.sign, WITNESS.public)

        assert both.startswith(note)
        verifiers = LOG.verifiers | WITNESS.verifiers
        assert open_note(both, verifiers)[1] == [
            (LOG.name, LOG.key_id),
            (WITNESS.name, WITNESS.key_id),
        ]

    def test_add_signature_refuses_the_same_key_twice(self):
        """A key cannot sign the same note twice."""
        note = sign_note("x\n", LOG.name, LOG.sign, LOG.public)

        with pytest.raises(InvalidRequestError, match="already signed"):
            add_signature(note, LOG.name, LOG.sign, LOG.public)


OTHER_TEXT = "y\n"


def _b64sig(key: Key, text: str) -> str:
    return base64.b64encode(key.key_id + key.sign(text.encode())).decode()


class TestOpenNote:
    def test_go_note_opens(self):
        """The Go example note verifies with the Go example vkey."""
        text, verified = open_note(GO_NOTE, verifiers_from_vkeys([GO_VKEY]))

        assert text == GO_TEXT
        assert verified == [("PeterNeumann", bytes.fromhex("c74f20a3"))]

    def test_no_known_key_fails(self):
        """A note signed only by unknown keys is rejected, as is any note with no verifiers."""
        note = sign_note("x\n", LOG.name, LOG.sign, LOG.public)

        for verifiers in [{}, WITNESS.verifiers]:
            with pytest.raises(AuditIntegrityError, match="no signature from a trusted key"):
                open_note(note, verifiers)

    def test_unknown_signatures_are_ignored(self):
        """Signatures by keys the caller does not know neither help nor hurt."""
        note = add_signature(
            sign_note("x\n", LOG.name, LOG.sign, LOG.public),
            WITNESS.name,
            WITNESS.sign,
            WITNESS.public,
        )

        assert open_note(note, LOG.verifiers)[1] == [(LOG.name, LOG.key_id)]

    def test_tampered_text_fails(self):
        """Changing one character of the text breaks the signature."""
        tampered = GO_NOTE.replace("cryptography", "cryptographY")

        with pytest.raises(AuditIntegrityError, match="does not verify"):
            open_note(tampered, GO_KEY.verifiers)

    def test_tampered_signature_fails(self):
        """Flipping any bit of the key id or signature makes the note fail."""
        prefix, sig_b64 = GO_NOTE.rsplit(" ", 1)
        blob = base64.b64decode(sig_b64)
        for i in range(len(blob) * 8):
            flipped = bytearray(blob)
            flipped[i // 8] ^= 1 << (i % 8)
            note = prefix + " " + base64.b64encode(bytes(flipped)).decode() + "\n"

            with pytest.raises(AuditIntegrityError):
                open_note(note, GO_KEY.verifiers)

    def test_wrong_key_fails(self):
        """A trusted (name, id) bound to another public key rejects the note."""
        with pytest.raises(AuditIntegrityError, match="does not verify"):
            open_note(GO_NOTE, {(GO_KEY.name, GO_KEY.key_id): LOG.public})

    def test_one_bad_known_signature_fails_the_note(self):
        """A good signature does not excuse a bad one from another trusted key."""
        note = sign_note("x\n", LOG.name, LOG.sign, LOG.public)
        forged = note + f"\u2014 {WITNESS.name} {_b64sig(WITNESS, OTHER_TEXT)}\n"

        with pytest.raises(AuditIntegrityError, match="does not verify"):
            open_note(forged, LOG.verifiers | WITNESS.verifiers)

    def test_repeated_bad_line_from_a_known_key_fails(self):
        """A second line from the same trusted key is verified too, not skipped."""
        note = sign_note("x\n", LOG.name, LOG.sign, LOG.public)
        repeated = note + f"\u2014 {LOG.name} {_b64sig(LOG, OTHER_TEXT)}\n"

        with pytest.raises(AuditIntegrityError, match="does not verify"):
            open_note(repeated, LOG.verifiers)

    @pytest.mark.parametrize(
        "note",
        [
            GO_TEXT + GO_SIG,  # No blank line.
            GO_TEXT + "\n",  # No signature lines.
            GO_NOTE[:-1],  # Last signature line without its newline.
            GO_NOTE.replace("\u2014", "-"),  # Hyphen instead of an em dash.
            GO_NOTE.replace("\u2014 ", "\u2014"),  # No space after the dash.
            GO_NOTE.replace("PeterNeumann x", "Peter+Neumann x"),  # '+' in the name.
            GO_NOTE.replace("=\n", "\n"),  # Unpadded base64.
            GO_NOTE.replace("x08go", "x08go "),  # Space inside the base64.
            GO_TEXT + "\n\u2014 PeterNeumann AAAA\n",  # Key id but no signature.
            GO_TEXT + "\n\u2014 PeterNeumann \n",  # Empty signature.
            GO_NOTE + "\n",  # Blank line after the signatures.
            "\x01" + GO_NOTE,  # Control character.
            GO_NOTE + GO_SIG * 100,  # More than 100 signatures.
        ],
    )
    def test_malformed_notes_fail(self, note):
        """Any deviation from text, blank line, signature lines is rejected."""
        with pytest.raises(AuditIntegrityError, match="malformed"):
            open_note(note, GO_KEY.verifiers)

    def test_repeated_good_signatures_are_listed_once(self):
        """Duplicate valid lines from one key are accepted but reported once."""
        note = GO_NOTE + GO_SIG * 3

        assert open_note(note, GO_KEY.verifiers)[1] == [(GO_KEY.name, GO_KEY.key_id)]


ROOT = hashlib.sha256(b"root").digest()
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _non_canonical(data: bytes) -> str:
    """Base64 of 32 bytes with a padding bit set: decodes to the same bytes, but non-canonical."""
    text = base64.b64encode(data).decode()
    last = B64[B64.index(text[-2]) ^ 1]
    assert base64.b64decode(text[:-2] + last + "=") == data
    return text[:-2] + last + "="


class TestCheckpoint:
    def test_body_format(self):
        """The body is origin, size, base64 root, then extensions, each ending in newline."""
        cp = Checkpoint(origin="example.com/log", size=3, root=ROOT, extensions=("ext one",))

        assert cp.body() == (f"example.com/log\n3\n{base64.b64encode(ROOT).decode()}\next one\n")

    def test_spec_example_parses(self):
        """The checkpoint from the C2SP tlog-checkpoint spec parses."""
        body = (
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        )

        cp = Checkpoint.parse(body)

        assert (cp.origin, cp.size, cp.extensions) == ("example.com/behind-the-sofa", 20852163, ())
        assert cp.body() == body

    @pytest.mark.parametrize("extensions", [(), ("a",), ("a b", "c+d")])
    @pytest.mark.parametrize("size", [0, 1, 2**63])
    def test_round_trip(self, size, extensions):
        """parse(body()) returns an equal checkpoint."""
        cp = Checkpoint(origin="o", size=size, root=ROOT, extensions=extensions)

        assert Checkpoint.parse(cp.body()) == cp

    @pytest.mark.parametrize(
        ("size", "root", "tail"),
        [
            ("01", None, ""),  # Leading zero.
            ("+1", None, ""),
            (" 1", None, ""),
            ("-1", None, ""),
            ("\u0661", None, ""),  # Arabic-Indic digit one.
            ("1.0", None, ""),
            ("", None, ""),
            (str(2**64), None, ""),
            ("1", base64.b64encode(ROOT[:31]).decode(), ""),  # Short root.
            ("1", base64.b64encode(ROOT).decode().rstrip("="), ""),  # Unpadded.
            ("1", _non_canonical(ROOT), ""),  # Non-zero padding bits.
            ("1", None, "\n"),  # Empty extension line.
            ("1", None, "ext\x7f\x02\n"),  # Control character.
        ],
    )
    def test_parse_is_strict(self, size, root, tail):
        """Any non-canonical size, root or extension line is rejected."""
        root = base64.b64encode(ROOT).decode() if root is None else root

        with pytest.raises(AuditIntegrityError, match="malformed checkpoint"):
            Checkpoint.parse(f"o\n{size}\n{root}\n{tail}")

    @pytest.mark.parametrize(
        "body", ["", "o\n1\n", f"o\n1\n{base64.b64encode(ROOT).decode()}", "\n0\n\n"]
    )
    def test_parse_rejects_missing_lines(self, body):
        """Fewer than three lines, or no final newline, is rejected."""
        with pytest.raises(AuditIntegrityError):
            Checkpoint.parse(body)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"origin": "", "size": 1, "root": ROOT},
            {"origin": "a\nb", "size": 1, "root": ROOT},
            {"origin": "o", "size": -1, "root": ROOT},
            {"origin": "o", "size": True, "root": ROOT},
            {"origin": "o", "size": 1, "root": ROOT[:31]},
            {"origin": "o", "size": 1, "root": ROOT, "extensions": ("",)},
        ],
    )
    def test_construction_validates(self, kwargs):
        """A checkpoint that could not be written faithfully cannot be built."""
        with pytest.raises(InvalidRequestError):
            Checkpoint(**kwargs)


def _signed_log(n: int) -> tuple[MerkleTree, str]:
    tree = MerkleTree.from_leaf_hashes(leaf_hash(b"%d" % i) for i in range(n))
    body = Checkpoint(origin=LOG.name, size=n, root=tree.root()).body()
    return tree, sign_note(body, LOG.name, LOG.sign, LOG.public)


class TestTlogProof:
    def test_format(self):
        """The bundle is header, index, one hash per line, blank line, then the note."""
        tree, note = _signed_log(5)
        path = tree.inclusion_proof(2, 5)

        text = format_tlog_proof(2, path, note)

        hashes = "".join(base64.b64encode(h).decode() + "\n" for h in path)
        assert text == f"{TLOG_PROOF_HEADER}\nindex 2\n{hashes}\n{note}"

    @pytest.mark.parametrize(("index", "size"), [(0, 1), (2, 5), (99, 100)])
    @pytest.mark.parametrize("extra", [None, b"", b"vrf proof \xff"])
    def test_round_trip_and_verify(self, index, size, extra):
        """format then parse returns the same parts, and the proof verifies offline."""
        tree, note = _signed_log(size)
        path = tree.inclusion_proof(index, size)

        text = format_tlog_proof(index, path, note, extra=extra)
        parsed = parse_tlog_proof(text)
        cp = verify_tlog_proof(
            text, leaf_hash(b"%d" % index), origin=LOG.name, verifiers=LOG.verifiers
        )

        assert parsed == TlogProof(index=index, hashes=tuple(path), checkpoint=note, extra=extra)
        assert (cp.size, cp.root) == (size, tree.root())

    def test_verify_rejects_wrong_leaf_origin_or_key(self):
        """Another leaf, another log's origin or an untrusted key fails verification."""
        tree, note = _signed_log(8)
        text = format_tlog_proof(3, tree.inclusion_proof(3, 8), note)

        with pytest.raises(AuditIntegrityError, match="root"):
            verify_tlog_proof(text, leaf_hash(b"4"), origin=LOG.name, verifiers=LOG.verifiers)
        with pytest.raises(AuditIntegrityError, match="origin"):
            verify_tlog_proof(text, leaf_hash(b"3"), origin="other", verifiers=LOG.verifiers)
        with pytest.raises(AuditIntegrityError, match="trusted key"):
            verify_tlog_proof(text, leaf_hash(b"3"), origin=LOG.name, verifiers=WITNESS.verifiers)

    def test_verify_rejects_a_tampered_hash(self):
        """Changing one proof hash fails verification."""
        tree, note = _signed_log(8)
        path = tree.inclusion_proof(3, 8)
        path[1] = hashlib.sha256(b"x").digest()

        with pytest.raises(AuditIntegrityError):
            verify_tlog_proof(
                format_tlog_proof(3, path, note),
                leaf_hash(b"3"),
                origin=LOG.name,
                verifiers=LOG.verifiers,
            )

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda t: t.replace(TLOG_PROOF_HEADER, "c2sp.org/tlog-proof@v2"),
            lambda t: t.replace("index 2\n", ""),
            lambda t: t.replace("index 2", "index 02"),
            lambda t: t.replace("index 2", "index  2"),
            lambda t: t.replace("index 2", "index -2"),
            lambda t: t.replace("index 2\n", "index 2\nextra AA==\n"),  # extra after index.
            lambda t: t.replace("index 2\n", "extra A\nindex 2\n"),
            lambda t: t.replace("=\n", "\n", 1),  # Unpadded hash.
            lambda t: t.replace("\n\n", "\n", 1),  # No blank line before the note.
            lambda t: t.split("\n\n", 1)[0] + "\n\n",  # No note.
            lambda t: t[: t.rindex("\u2014")],  # Note without signatures.
        ],
    )
    def test_parse_is_strict(self, mangle):
        """Wrong header, index, extra, hash lines or a missing note are rejected."""
        tree, note = _signed_log(5)
        text = mangle(format_tlog_proof(2, tree.inclusion_proof(2, 5), note))

        with pytest.raises(AuditIntegrityError, match="malformed"):
            parse_tlog_proof(text)

    def test_format_validates_inputs(self):
        """A negative index, a short hash or a malformed note is refused."""
        tree, note = _signed_log(5)
        path = tree.inclusion_proof(2, 5)

        for args in [(-1, path, note), (2, [path[0][:31]], note), (2, path, "not a note\n")]:
            with pytest.raises(InvalidRequestError):
                format_tlog_proof(*args)
