"""Sealed audit events: chain, signatures and tamper detection."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proctor.audit.events import GENESIS, KeyInfo, seal, verify_events
from proctor.audit.keys import LocalSigner
from proctor.core.canonical import canonical
from proctor.core.ports import EventRow

SIGNER = LocalSigner(b"\x01" * 32)
KEYS = {SIGNER.key_id: KeyInfo(SIGNER.public_key)}


def _log(n, signer=SIGNER):
    rows, prev = [], GENESIS
    for i in range(n):
        body = {
            "type": "test.event",
            "timestamp": f"2026-01-01T00:00:{i % 60:02d}+00:00",
            "plan_id": f"p{i // 3}",
            "step_id": None,
            "data": {"i": i, "note": "x" * (i % 7)},
        }
        row = seal(body, seq=i, prev_hash=prev, signer=signer)
        rows.append(row)
        prev = row.hash
    return rows


def _rewrite(row, body, *, rehash=False):
    data = canonical(body)
    return dataclasses.replace(
        row, body=data, hash="sha256:" + hashlib.sha256(data).hexdigest() if rehash else row.hash
    )


class TestVerify:
    def test_empty_log(self):
        """An empty log verifies with zero events."""
        assert verify_events([], KEYS).as_dict() == {
            "ok": True,
            "events": 0,
            "first_bad_seq": None,
            "problem": None,
        }

    def test_intact(self):
        """An untouched log verifies."""
        report = verify_events(_log(20), KEYS)
        assert report.ok and report.events == 20

    def test_modified(self):
        """Changing a field of an event is reported as modified at its index."""
        rows = _log(10)
        body = orjson.loads(rows[4].body)
        body["data"]["i"] = 999
        rows[4] = _rewrite(rows[4], body)
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (4, "modified")

    def test_deleted(self):
        """Removing an event is reported as deleted at its index."""
        rows = _log(10)
        del rows[6]
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (6, "deleted")

    def test_inserted(self):
        """A copy of an earlier event placed later is reported as inserted."""
        rows = _log(10)
        rows.insert(7, rows[3])
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (7, "inserted")

    def test_reordered(self):
        """Swapping two events is reported as reordered at the first."""
        rows = _log(10)
        rows[2], rows[5] = rows[5], rows[2]
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (2, "reordered")

    def test_unknown_key(self):
        """An event signed by a key outside the keyring is reported as unknown_key."""
        other = LocalSigner(b"\x02" * 32)
        rows = _log(5, signer=other)
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (0, "unknown_key")

    def test_bad_signature_with_rebuilt_chain(self):
        """A forger who rebuilds the chain without the key is caught by the signature."""
        rows = _log(6)
        body = orjson.loads(rows[3].body)
        body["data"]["i"] = -1
        forged_sig = base64.b64encode(b"\x00" * 64).decode()
        body["signature"] = forged_sig
        rows[3] = _rewrite(rows[3], body, rehash=True)
        prev = rows[3].hash
        for k in range(4, 6):
            b = orjson.loads(rows[k].body)
            b["prev_hash"] = prev
            rows[k] = _rewrite(rows[k], b, rehash=True)
            prev = rows[k].hash
        r = verify_events(rows, KEYS)
        assert (r.first_bad_seq, r.problem) == (3, "bad_signature")

    def test_fast_mode_skips_signatures(self):
        """Fast mode checks the chain but not signatures."""
        rows = _log(6)
        body = orjson.loads(rows[5].body)
        body["signature"] = base64.b64encode(b"\x00" * 64).decode()
        rows[5] = _rewrite(rows[5], body, rehash=True)
        assert verify_events(rows, KEYS, check_signatures=False).ok
        assert verify_events(rows, KEYS).problem == "bad_signature"

    def test_key_validity(self):
        """An event outside its key's validity period is refused."""
        from datetime import UTC, datetime

        keys = {
            SIGNER.key_id: KeyInfo(
                SIGNER.public_key, None, datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
            )
        }
        r = verify_events(_log(40), keys)
        assert r.problem == "unknown_key" and r.first_bad_seq == 31

    @settings(max_examples=150, deadline=None)
    @given(st.integers(min_value=0, max_value=11), st.data())
    def test_any_byte_flip_is_caught(self, index, data):
        """Flipping any byte of any stored event breaks verification exactly at that event."""
        rows = _log(12)
        raw = bytearray(rows[index].body)
        pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=7))
        raw[pos] ^= 1 << bit
        rows[index] = EventRow(
            seq=rows[index].seq,
            type=rows[index].type,
            plan_id=rows[index].plan_id,
            step_id=rows[index].step_id,
            timestamp=rows[index].timestamp,
            body=bytes(raw),
            hash=rows[index].hash,
        )
        r = verify_events(rows, KEYS)
        assert not r.ok
        assert r.first_bad_seq == index


class _EcdsaSigner:
    """An ECDSA P-256 signer shaped like the KMS one (DER key, DER signatures)."""

    def __init__(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = "ecdsa-p256:" + hashlib.sha256(self.public_der).hexdigest()[:16]

    def sign(self, data):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_keys(self):
        return {self.key_id: self.public_der}


class TestEcdsaEvents:
    def test_ecdsa_events_verify(self):
        """Events signed with an ECDSA P-256 key (as a KMS may hold) verify."""
        signer = _EcdsaSigner()
        rows = _log(5, signer=signer)
        keys = {signer.key_id: KeyInfo(signer.public_der)}
        assert verify_events(rows, keys).ok

    def test_wrong_key_type_is_bad_signature_not_crash(self):
        """An Ed25519 key id bound to a key of the wrong length reports bad_signature."""
        rows = _log(2)
        keys = {SIGNER.key_id: KeyInfo(b"\x00" * 31)}
        r = verify_events(rows, keys)
        assert (r.first_bad_seq, r.problem) == (0, "bad_signature")


class TestSealShortcut:
    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.text(max_size=12),
            st.text(max_size=20) | st.integers(-(2**53) + 1, 2**53 - 1),
            max_size=6,
        ),
        st.text(max_size=30),
    )
    def test_spliced_signature_equals_canonical(self, data, user):
        """Splicing the signature into the canonical bytes equals serialising the event."""
        body = {
            "type": "t",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "plan_id": None,
            "step_id": None,
            "trace_id": None,
            "span_id": None,
            "data": data,
            "user_id": user,
        }
        row = seal(body, seq=0, prev_hash=GENESIS, signer=SIGNER)
        assert row.body == canonical(orjson.loads(row.body))
