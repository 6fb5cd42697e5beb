"""verify_log: events, Merkle tree and signed checkpoints checked together."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proctor.audit.events import GENESIS, KeyInfo, seal
from proctor.audit.keys import LocalSigner
from proctor.audit.merkle import MerkleTree, leaf_hash
from proctor.audit.note import Checkpoint, sign_note
from proctor.audit.verify import build_tree, verify_log
from proctor.core.canonical import canonical
from proctor.errors import InvalidRequestError

ORIGIN = "example.com/proctor-test"
SIGNER = LocalSigner(b"\x01" * 32)
OTHER = LocalSigner(b"\x02" * 32)
KEYS = {SIGNER.key_id: KeyInfo(SIGNER.public_key)}


class _Impostor:
    """A real signer that claims another key's id: what a forger without the key can do."""

    def __init__(self, claimed: str, real: LocalSigner) -> None:
        self.key_id = claimed
        self._real = real

    def sign(self, data):
        return self._real.sign(data)

    def public_keys(self):
        return {self.key_id: self._real.public_key}


class _EcdsaSigner:
    """An ECDSA P-256 signer shaped like the KMS one (DER key, DER signatures)."""

    def __init__(self):
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = "ecdsa-p256:" + hashlib.sha256(self.public_der).hexdigest()[:16]

    def sign(self, data):
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_keys(self):
        return {self.key_id: self.public_der}


def _body(i):
    return {
        "type": "test.event",
        "timestamp": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
        "plan_id": f"p{i // 3}",
        "step_id": None,
        "data": {"i": i, "note": "x" * (i % 7), "nested": {"seq": 99, "prev_hash": "no"}},
    }


def _log(n, signer=SIGNER, *, start=0, prev=GENESIS):
    rows = []
    for i in range(start, start + n):
        row = seal(_body(i), seq=i, prev_hash=prev, signer=signer)
        rows.append(row)
        prev = row.hash
    return rows


def _note(rows, size, *, origin=ORIGIN, signer=SIGNER, root=None):
    tree = MerkleTree.from_leaf_hashes(leaf_hash(r.body) for r in rows[:size])
    cp = Checkpoint(origin=origin, size=size, root=root if root is not None else tree.root())
    return sign_note(cp.body(), origin, signer.sign, signer.public_key)


def _verify(events, notes, keys=KEYS, **kw):
    return verify_log(events, notes, keys, origin=ORIGIN, **kw)


def _both(events, notes, keys=KEYS, **kw):
    """Return the (problem, index) of full and fast mode, which must agree."""
    full, fast = _verify(events, notes, keys, **kw), _verify(events, notes, keys, full=False, **kw)
    assert (full.problem, full.first_bad_seq) == (fast.problem, fast.first_bad_seq), (full, fast)
    return full.problem, full.first_bad_seq


def _rewrite(rows, i, **changes):
    """Return rows with event i's body changed (still canonical) and its stored hash kept."""
    body = orjson.loads(rows[i].body)
    body.update(changes)
    out = list(rows)
    out[i] = dataclasses.replace(rows[i], body=canonical(body))
    return out


def _sha(raw):
    return "sha256:" + hashlib.sha256(raw).hexdigest()


ROWS = _log(20)
NOTES = [_note(ROWS, s) for s in (5, 12, 20)]


class TestBuildTree:
    def test_same_roots_as_incremental_tree(self):
        """The bulk-built tree has the incremental tree's root at every size."""
        leaves = [leaf_hash(bytes([i])) for i in range(37)]
        bulk, inc = build_tree(leaves), MerkleTree.from_leaf_hashes(leaves)
        assert all(bulk.root(s) == inc.root(s) for s in range(38))
        assert bulk.consistency_proof(5, 37) == inc.consistency_proof(5, 37)

    def test_empty_and_single(self):
        """Trees of zero and one leaf are well formed."""
        assert build_tree([]).size == 0
        assert build_tree([leaf_hash(b"a")]).root() == leaf_hash(b"a")


class TestIntact:
    def test_empty_log(self):
        """An empty log without checkpoints verifies with zero events."""
        report = _verify([], [])
        assert report.as_dict() == {"ok": True, "events": 0, "first_bad_seq": None, "problem": None}

    def test_empty_log_fast(self):
        """An empty log verifies in fast mode too."""
        assert _verify([], [], full=False).ok

    def test_rows_and_bytes_both_modes(self):
        """Stored rows and raw leaf bytes verify, in full and fast mode."""
        for full in (True, False):
            for events in (ROWS, [r.body for r in ROWS], (r.body for r in ROWS)):
                report = _verify(events, NOTES, full=full)
                assert report.ok and report.events == 20

    def test_checkpoint_order_does_not_matter(self):
        """Checkpoints may come in any order."""
        assert _verify(ROWS, NOTES[::-1]).ok

    def test_events_after_last_checkpoint(self):
        """Events not yet covered by a checkpoint are fine."""
        assert _verify(ROWS, NOTES[:1]).ok

    def test_parallel_workers(self):
        """Worker processes give the same verdict, including the exact first bad index."""
        assert _verify(ROWS, NOTES, workers=2).ok
        forged = _log(3, _Impostor(SIGNER.key_id, OTHER), start=20, prev=ROWS[-1].hash)
        report = _verify(ROWS + forged, NOTES, workers=2)
        assert (report.problem, report.first_bad_seq) == ("bad_signature", 20)

    def test_threaded_process_checks_in_process(self):
        """With other threads running, no worker is forked and the verdict is the same."""
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait)
        thread.start()
        try:
            forged = _log(3, _Impostor(SIGNER.key_id, OTHER), start=20, prev=ROWS[-1].hash)
            report = _verify(ROWS + forged, NOTES, workers=2)
        finally:
            stop.set()
            thread.join()
        assert (report.problem, report.first_bad_seq) == ("bad_signature", 20)

    def test_progress(self):
        """Progress is reported with growing counts up to the number of events."""
        seen: list[int] = []
        _verify(ROWS, NOTES, progress=seen.append)
        assert seen == sorted(seen) and seen[-1] == 20
        fast: list[int] = []
        _verify(ROWS, NOTES, full=False, progress=fast.append)
        assert fast[-1] == 20

    def test_ecdsa_events(self):
        """Events signed with an ECDSA P-256 key (a KMS without EdDSA) verify in full mode."""
        signer = _EcdsaSigner()
        rows = _log(4, signer)
        assert _verify(rows, [], {signer.key_id: KeyInfo(signer.public_der)}).ok


class TestEventProblems:
    def test_modified_middle(self):
        """A changed event is reported at its index in both modes."""
        rows = _rewrite(ROWS, 7, plan_id="p-evil")
        assert _both(rows, NOTES) == ("modified", 7)

    def test_modified_last_event_of_export(self):
        """The last event has no successor: the covering checkpoint shows it was modified."""
        bodies = [r.body for r in _rewrite(ROWS, 19, plan_id="p-evil")]
        assert _both(bodies, NOTES) == ("modified", 19)

    def test_deleted(self):
        """A missing event is reported at its index."""
        assert _both(ROWS[:4] + ROWS[5:], NOTES) == ("deleted", 4)

    def test_inserted(self):
        """A copied event is reported where the copy sits."""
        assert _both([*ROWS[:10], ROWS[9], *ROWS[10:]], NOTES) == ("inserted", 10)

    def test_reordered(self):
        """Two swapped events are reported at the first of them."""
        rows = list(ROWS)
        rows[3], rows[4] = rows[4], rows[3]
        assert _both(rows, NOTES) == ("reordered", 3)

    def test_unknown_key(self):
        """An event signed by a key outside the keyring is unknown_key in both modes."""
        forged = _log(2, OTHER, start=20, prev=ROWS[-1].hash)
        assert _both(ROWS + forged, NOTES) == ("unknown_key", 20)

    def test_key_outside_validity_is_full_mode_only(self):
        """A key used outside its validity is unknown_key in full mode; fast mode skips it."""
        keys = {SIGNER.key_id: KeyInfo(SIGNER.public_key, None, datetime(2026, 1, 1, tzinfo=UTC))}
        report = _verify(ROWS, NOTES, keys)
        assert (report.problem, report.first_bad_seq) == ("unknown_key", 1)
        assert _verify(ROWS, NOTES, keys, full=False).ok

    def test_forged_event_after_last_checkpoint(self):
        """A forged signature no checkpoint covers is bad_signature; fast mode cannot see it."""
        forged = _log(2, _Impostor(SIGNER.key_id, OTHER), start=20, prev=ROWS[-1].hash)
        report = _verify(ROWS + forged, NOTES)
        assert (report.problem, report.first_bad_seq) == ("bad_signature", 20)
        assert _verify(ROWS + forged, NOTES, full=False).ok

    def test_forged_event_under_checkpoint_is_modified(self):
        """A re-signed event that a checkpoint covers differs from what the log committed."""
        impostor = _Impostor(SIGNER.key_id, OTHER)
        resigned = seal(_body(19), seq=19, prev_hash=ROWS[18].hash, signer=impostor)
        assert _both([*ROWS[:19], resigned], NOTES) == ("modified", 19)

    def test_stored_hash_is_checked_for_rows(self):
        """For store rows, the last event must hash to the hash stored beside it."""
        rows = [*ROWS[:-1], dataclasses.replace(ROWS[-1], hash="sha256:" + "1" * 64)]
        assert _both(rows, NOTES[:2]) == ("modified", 19)

    def test_mixed_events_refused(self):
        """Rows and bytes cannot be mixed."""
        with pytest.raises(InvalidRequestError):
            _verify([ROWS[0], ROWS[1].body], [])


class TestCheckpointProblems:
    def test_foreign_origin(self):
        """A checkpoint of another log is bad_checkpoint at its last covered index."""
        notes = [*NOTES, _note(ROWS, 8, origin="other.example/log")]
        assert _both(ROWS, notes) == ("bad_checkpoint", 7)

    def test_foreign_origin_signed_under_our_name(self):
        """A checkpoint naming another origin is refused even when our key signed it."""
        text = Checkpoint(origin="other.example/log", size=8, root=b"\x00" * 32).body()
        note = sign_note(text, ORIGIN, SIGNER.sign, SIGNER.public_key)
        assert _both(ROWS, [*NOTES, note]) == ("bad_checkpoint", 7)

    def test_unknown_key(self):
        """A checkpoint signed by a key outside the keyring is unknown_key."""
        notes = [*NOTES, _note(ROWS, 9, signer=OTHER)]
        assert _both(ROWS, notes) == ("unknown_key", 8)

    def test_tampered_signature(self):
        """A checkpoint whose signature by a known key fails is bad_checkpoint."""
        text, _, line = NOTES[1].rstrip("\n").rpartition("\n")
        name, blob = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(blob))
        raw[-1] ^= 1
        forged = f"{text}\n{name} {base64.b64encode(bytes(raw)).decode()}\n"
        assert _both(ROWS, [NOTES[0], forged, NOTES[2]]) == ("bad_checkpoint", 11)

    def test_malformed_note(self):
        """A note that is not a signed note is bad_checkpoint, with no index if no size."""
        report = _verify(ROWS, [*NOTES, "garbage"])
        assert (report.problem, report.first_bad_seq) == ("bad_checkpoint", None)
        report = _verify(ROWS, [*NOTES, f"{ORIGIN}\n6\nnot-base64\n\n"])
        assert (report.problem, report.first_bad_seq) == ("bad_checkpoint", 5)

    def test_same_size_different_roots(self):
        """Two signed checkpoints of one size with different roots are inconsistent."""
        other = _note(ROWS, 12, root=b"\x07" * 32)
        assert _both(ROWS, [*NOTES, other]) == ("inconsistent_checkpoints", 11)

    def test_not_a_prefix_of_later(self):
        """An earlier signed root that the later, matching checkpoint does not extend."""
        other = _note(ROWS, 12, root=b"\x07" * 32)
        assert _both(ROWS, [NOTES[0], other, NOTES[2]]) == ("inconsistent_checkpoints", 11)

    def test_signed_root_of_other_events(self):
        """The last checkpoint signs a root its (valid) events do not have: bad_checkpoint."""
        other = _note(ROWS, 20, root=b"\x07" * 32)
        assert _both(ROWS, [NOTES[0], NOTES[1], other]) == ("bad_checkpoint", 19)

    def test_truncated(self):
        """A checkpoint covering more events than present: truncated at the first missing."""
        assert _both(ROWS[:17], NOTES) == ("truncated", 17)

    def test_truncated_empty_log(self):
        """Every event gone: truncated at 0."""
        assert _both([], NOTES) == ("truncated", 0)

    def test_first_problem_in_log_order(self):
        """A checkpoint problem before an event problem is reported first, and vice versa."""
        rows = _rewrite(ROWS, 15, plan_id="p-evil")
        bad = _note(ROWS, 3, signer=OTHER)
        assert _both(rows, [*NOTES, bad]) == ("unknown_key", 2)
        rows = _rewrite(ROWS, 1, plan_id="p-evil")
        assert _both(rows, [*NOTES, bad]) == ("modified", 1)

    def test_event_problem_wins_a_tie(self):
        """At the same index, the event problem is reported."""
        rows = _rewrite(ROWS, 4, plan_id="p-evil")
        bad = _note(ROWS, 5, signer=OTHER)
        assert _both(rows, [*NOTES[1:], bad]) == ("modified", 4)

    def test_invalid_origin(self):
        """An origin that cannot be a key name is a caller error."""
        with pytest.raises(InvalidRequestError) as err:
            verify_log(ROWS, NOTES, KEYS, origin="has space")
        assert err.value.field == "origin"

    def test_key_of_wrong_length_is_not_a_crash(self):
        """A public key that is not 32 bytes cannot verify anything, and does not raise."""
        report = _verify(ROWS, NOTES, {SIGNER.key_id: KeyInfo(b"\x00" * 31)})
        assert (report.problem, report.first_bad_seq) == ("bad_signature", 0)


class TestPinnedCheckpoints:
    """A checkpoint the verifier kept is checked even when the store no longer has it."""

    def test_a_kept_note_of_the_intact_log_verifies(self):
        """Pinning a checkpoint of the log as it is changes nothing."""
        assert _both(ROWS, NOTES[:2], pinned=[NOTES[2]]) == (None, None)

    def test_tail_cut_with_its_checkpoints_is_invisible_without_a_pin(self):
        """The limitation pins address: events and checkpoints cut together still verify."""
        assert _both(ROWS[:15], NOTES[:2]) == (None, None)

    def test_tail_cut_with_its_checkpoints_is_truncated_against_a_pin(self):
        """The same cut, checked against a kept note of size 20: truncated at 15."""
        assert _both(ROWS[:15], NOTES[:2], pinned=[NOTES[2]]) == ("truncated", 15)

    def test_everything_deleted_is_truncated_at_zero(self):
        """No events and no checkpoints left: truncated at 0."""
        assert _both([], [], pinned=[NOTES[0]]) == ("truncated", 0)

    def test_a_rewritten_history_is_inconsistent(self):
        """A log re-signed from scratch with the instance's key disagrees with a kept note."""
        other, prev = [], GENESIS
        for i in range(20):
            other.append(
                seal({**_body(i), "data": {"i": -i}}, seq=i, prev_hash=prev, signer=SIGNER)
            )
            prev = other[-1].hash
        own = [_note(other, 20)]

        assert _both(other, own) == (None, None)
        assert _both(other, own, pinned=[NOTES[1]]) == ("inconsistent_checkpoints", 11)

    def test_a_kept_note_by_an_unknown_key(self):
        """A kept note no known key signed is reported, not trusted."""
        assert _both(ROWS, NOTES, pinned=[_note(ROWS, 20, signer=OTHER)]) == ("unknown_key", 19)


class TestRowColumns:
    """The columns a store keeps beside each event (for per-plan views) must match it."""

    @pytest.mark.parametrize(
        ("column", "value"),
        [
            ("plan_id", "p-other"),
            ("plan_id", None),
            ("type", "step.failed"),
            ("step_id", "s9"),
            ("timestamp", "2030-01-01T00:00:00+00:00"),
        ],
    )
    def test_a_rewritten_column_is_modified(self, column, value):
        """A column rewritten under signed, intact bytes is ``modified`` at its seq."""
        rows = list(ROWS)
        rows[7] = dataclasses.replace(rows[7], **{column: value})

        assert _both(rows, NOTES) == ("modified", 7)
        assert column in _verify(rows, NOTES, full=False).detail

    def test_columns_of_an_intact_log_match(self):
        """Every column as the store wrote it (from the event) verifies."""
        assert _both(ROWS, NOTES) == (None, None)

    def test_an_event_problem_at_the_same_seq_comes_first(self):
        """Bytes and columns both wrong at one seq: the bytes' problem is reported."""
        rows = _rewrite(ROWS, 7, plan_id="p-evil")
        rows[7] = dataclasses.replace(rows[7], plan_id="p-evil")

        assert _both(rows, NOTES) == ("modified", 7)
        assert "column" not in _verify(rows, NOTES).detail

    def test_exported_bytes_have_no_columns(self):
        """An export's lines carry no columns: nothing to compare, and no false alarm."""
        assert _both([r.body for r in ROWS], NOTES) == (None, None)


class TestMalformedEvents:
    """A tampered event that Proctor could never have written is reported, never a crash."""

    VALID_FROM: ClassVar = {
        SIGNER.key_id: KeyInfo(SIGNER.public_key, datetime(2025, 1, 1, tzinfo=UTC))
    }

    def test_a_naive_timestamp_is_modified(self):
        """A timestamp without offset, against a key with a validity period: modified."""
        rows = _rewrite(ROWS, 8, timestamp="2026-01-01T00:00:08")

        assert _both(rows, NOTES, keys=self.VALID_FROM) == ("modified", 8)
        assert _both([r.body for r in rows], NOTES, keys=self.VALID_FROM) == ("modified", 8)

    def test_a_naive_timestamp_on_a_rehashed_last_event(self):
        """The last event, its stored hash updated too: reported at its seq, no TypeError."""
        body = orjson.loads(ROWS[-1].body)
        body["timestamp"] = "2026-01-01T00:00:19"
        raw = canonical(body)
        rows = [*ROWS[:-1], dataclasses.replace(ROWS[-1], body=raw, hash=_sha(raw))]

        report = _verify(rows, NOTES[:2], keys=self.VALID_FROM)

        assert (report.problem, report.first_bad_seq) == ("modified", 19)
        assert "offset" in report.detail

    def test_an_integer_jcs_cannot_write_is_modified(self):
        """An integer beyond ±2^53 in data: modified at its seq, in both modes and exports."""
        body = orjson.loads(ROWS[8].body)
        body["data"]["x"] = 2**60
        rows = list(ROWS)
        rows[8] = dataclasses.replace(rows[8], body=orjson.dumps(body, option=orjson.OPT_SORT_KEYS))

        assert _both(rows, NOTES) == ("modified", 8)
        assert _both([r.body for r in rows], NOTES) == ("modified", 8)

    def test_a_naive_timestamp_is_modified_whatever_the_key(self):
        """A key without validity period cannot excuse a timestamp that has no place in time."""
        body = orjson.loads(ROWS[-1].body)
        body["timestamp"] = "2026-01-01T00:00:19"
        raw = canonical(body)
        rows = [*ROWS[:-1], dataclasses.replace(ROWS[-1], body=raw, hash=_sha(raw))]

        report = _verify(rows, NOTES[:2])

        assert (report.problem, report.first_bad_seq) == ("modified", 19)
        assert "offset" in report.detail


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RETIRED = LocalSigner(b"\x03" * 32)
CURRENT = LocalSigner(b"\x04" * 32)
ROTATED = {
    # RETIRED signed for the first hour and a five-minute grace; CURRENT since the rotation.
    RETIRED.key_id: KeyInfo(RETIRED.public_key, T0, T0 + timedelta(hours=1, minutes=5)),
    CURRENT.key_id: KeyInfo(CURRENT.public_key, T0 + timedelta(hours=1)),
}


def _dated(stamps, *, rows=(), signer=None):
    """Chain events stamped ``stamps`` (seconds after T0) onto ``rows``.

    Each is signed by ``signer``, else by the key of its time (RETIRED before the rotation at
    T0 + 1 h, CURRENT after). The first event of a key the log has not signed with yet is
    preceded by its ``keys.rotated`` event, as Proctor writes it.
    """
    out, prev = list(rows), rows[-1].hash if rows else GENESIS
    signed = {orjson.loads(r.body)["key_id"] for r in out}
    for s in stamps:
        at = T0 + timedelta(seconds=s)
        by = signer or (RETIRED if s < 3600 else CURRENT)
        bodies = [_body(len(out)) | {"timestamp": at.isoformat()}]
        if out and by.key_id not in signed:
            rotated = {"type": "keys.rotated", "timestamp": at.isoformat(), "plan_id": None}
            rotated |= {"step_id": None, "data": {"key_id": by.key_id, "previous": None}}
            bodies.insert(0, rotated)
        signed.add(by.key_id)
        for body in bodies:
            row = seal(body, seq=len(out), prev_hash=prev, signer=by)
            out.append(row)
            prev = row.hash
    return out


# Events every ten minutes for two hours, across the rotation at one hour.
DATED = _dated(range(0, 7201, 600))


class TestTimeOrder:
    """Time never goes back further than the allowed clock skew (full mode)."""

    def test_a_log_in_time_order_verifies(self):
        """The rotated log, its timestamps in order, verifies in both modes."""
        assert _both(DATED, [_note(DATED, len(DATED), signer=CURRENT)], ROTATED) == (None, None)

    def test_a_retired_key_appending_inside_its_validity_is_a_regression(self):
        """A stolen retired key signs an event dated inside its validity, appended at the end.

        Its signature and validity are fine: only the time order shows the forgery.
        """
        rows = _dated([3600 + 240], rows=DATED, signer=RETIRED)  # 1 h 04 min, log at 2 h
        n = len(DATED)

        for events in (rows, [r.body for r in rows]):
            report = _verify(events, [], ROTATED)
            assert (report.problem, report.first_bad_seq) == ("timestamp_regression", n)
            assert report.as_dict()["problem"] == "timestamp_regression"
        assert (T0 + timedelta(seconds=3840)).isoformat() in report.detail
        assert f"(seq {n - 1})" in report.detail
        # Fast mode checks neither key validity nor time order.
        assert _verify(rows, [], ROTATED, full=False).ok

    def test_a_regression_within_the_skew_passes(self):
        """Thirty seconds back (replicas' clocks differ a little) is within the default."""
        rows = _dated([7200 - 30, 7200 + 60], rows=DATED)

        assert _verify(rows, [], ROTATED).ok

    def test_the_skew_is_a_parameter(self):
        """The same thirty seconds fail with a ten-second allowance; exactly the skew passes."""
        rows = _dated([7200 - 30], rows=DATED)
        n = len(DATED)

        report = _verify(rows, [], ROTATED, max_clock_skew=timedelta(seconds=10))
        assert (report.problem, report.first_bad_seq) == ("timestamp_regression", n)
        assert "30 s before" in report.detail and "skew of 10 s" in report.detail
        assert _verify(rows, [], ROTATED, max_clock_skew=timedelta(seconds=30)).ok
        with pytest.raises(InvalidRequestError) as err:
            _verify(rows, [], ROTATED, max_clock_skew=timedelta(seconds=-1))
        assert err.value.field == "max_clock_skew"

    def test_measured_from_the_latest_time_not_the_previous_event(self):
        """After a small step back, the next is compared with the latest time, not its neighbour."""
        rows = _dated([7200 - 200, 7200 - 400], rows=DATED)  # each 200 s before the last

        report = _verify(rows, [], ROTATED, max_clock_skew=timedelta(seconds=300))

        assert (report.problem, report.first_bad_seq) == ("timestamp_regression", len(DATED) + 1)

    def test_first_problem_in_log_order_with_workers(self):
        """Checked in worker processes, the first problem in log order is still reported."""
        impostor = _Impostor(CURRENT.key_id, OTHER)
        n = len(DATED)
        regression_first = _dated([7260], rows=_dated([60], rows=DATED), signer=impostor)
        signature_first = _dated([60], rows=_dated([7260], rows=DATED, signer=impostor))

        for workers in (1, 2):
            r = _verify(regression_first, [], ROTATED, workers=workers)
            assert (r.problem, r.first_bad_seq) == ("timestamp_regression", n)
            r = _verify(signature_first, [], ROTATED, workers=workers)
            assert (r.problem, r.first_bad_seq) == ("bad_signature", n)

    def test_an_event_problem_at_the_same_seq_comes_first(self):
        """A backdated event with a key outside its validity is unknown_key, as before."""
        rows = _dated([1800], rows=DATED, signer=CURRENT)  # CURRENT is valid from 1 h

        report = _verify(rows, [], ROTATED)

        assert (report.problem, report.first_bad_seq) == ("unknown_key", len(DATED))


def _keyed(*events):
    """Chain events given as (signer, None) for a plain event or (signer, data) for a
    ``keys.rotated`` event with that ``data``."""
    rows, prev = [], GENESIS
    for signer, rotated in events:
        body = _body(len(rows))
        if rotated is not None:
            body |= {"type": "keys.rotated", "plan_id": None, "data": rotated}
        row = seal(body, seq=len(rows), prev_hash=prev, signer=signer)
        rows.append(row)
        prev = row.hash
    return rows


TWO_KEYS = {s.key_id: KeyInfo(s.public_key) for s in (SIGNER, OTHER)}
THIRD = LocalSigner(b"\x05" * 32)
THREE_KEYS = {**TWO_KEYS, THIRD.key_id: KeyInfo(THIRD.public_key)}
NEW = {"key_id": OTHER.key_id, "previous": SIGNER.key_id}


class TestKeyChanges:
    """A change of signing key must be recorded by a keys.rotated event at or before it."""

    def test_a_key_change_without_keys_rotated_is_reported(self):
        """Events 0-2 by one key, 3-5 by another, nothing recording it: what a rotation
        killed between the keyring write and its event left (review repro k1)."""
        rows = _keyed(*[(SIGNER, None)] * 3, *[(OTHER, None)] * 3)

        for events in (rows, [r.body for r in rows]):  # a store's rows, an export's lines
            assert _both(events, [_note(rows, 6, signer=OTHER)], TWO_KEYS) == (
                "unrecorded_rotation",
                3,
            )
        report = _verify(rows, [], TWO_KEYS)
        assert OTHER.key_id in report.detail and SIGNER.key_id in report.detail
        assert report.as_dict()["problem"] == "unrecorded_rotation"

    def test_recorded_changes_verify(self):
        """Recorded by the rotation (signed by the old key, as `proctor keys rotate`), or by
        the new key's first event (on_first_use); a key that signed before may sign again
        (a process that has not reloaded the keyring yet); a key named as previous too."""
        by_rotation = _keyed((SIGNER, None), (SIGNER, NEW), (OTHER, None), (SIGNER, None))
        on_first_use = _keyed((SIGNER, None), (OTHER, NEW | {"on_first_use": True}))
        # The log's first event is already by the new key: the old one is named as previous.
        stale_first = _keyed((OTHER, NEW), (SIGNER, None), (OTHER, None))

        for rows in (by_rotation, on_first_use, stale_first):
            assert _both(rows, [_note(rows, len(rows))], TWO_KEYS) == (None, None)

    def test_a_record_after_the_first_use_still_records_it(self):
        """An older version's race: another process signed with the new key just before the
        rotating process committed its keys.rotated. The log says its key changed, one event
        late; it verifies. The same log without the record does not."""
        rows = _keyed((SIGNER, None), (OTHER, None), (OTHER, NEW))
        unrecorded = _keyed((SIGNER, None), (OTHER, None), (OTHER, None))

        assert _both(rows, [], TWO_KEYS) == (None, None)
        assert _both(unrecorded, [], TWO_KEYS) == ("unrecorded_rotation", 1)

    def test_a_recorded_rotation_covers_only_the_key_it_names(self):
        """After a recorded rotation to one key, a third key the log never named is
        reported, at its first event, even after a switch back."""
        rows = _keyed((SIGNER, None), (SIGNER, NEW), (OTHER, None), (SIGNER, None), (THIRD, None))

        assert _both(rows, [], THREE_KEYS) == ("unrecorded_rotation", 4)

    def test_a_problem_with_the_event_itself_comes_first(self):
        """At the same seq, a forged signature or an unknown key is what is reported."""
        forged = _keyed((SIGNER, None), (_Impostor(OTHER.key_id, SIGNER), None))
        unknown = _keyed((SIGNER, None), (OTHER, None))

        assert _verify(forged, [], TWO_KEYS).problem == "bad_signature"
        assert _both(unknown, [], KEYS) == ("unknown_key", 1)
