"""Masked values never reach the audit log: results, errors, reasons, simulations, hashes."""

from __future__ import annotations

import hashlib
import os
import stat

import orjson
import pytest

from proctor import Proctor
from proctor.app._outcomes import MAX_ERROR
from proctor.app.gateway import GatewayOptions
from proctor.app.journal import keyed_payload_hash, payload_hash
from proctor.app.redaction import MASK, redaction_for
from proctor.audit.keys import Keyring
from proctor.testing import make_plan

CARD = "4111111111111111"
SCHEMA = {
    "type": "object",
    "properties": {"card": {"type": "object"}, "amount": {"type": "integer"}},
}
LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class TestRedactionFor:
    def test_no_masked_step_is_none(self):
        """A plan whose steps mask nothing has no redaction (and costs nothing)."""
        assert redaction_for([]) is None
        assert redaction_for([("s1", {"a": "secret"}, ())]) is None

    def test_values_are_replaced_inside_text_keys_and_numbers(self):
        """A masked value goes wherever it appears: in a string, as a key, as a number."""
        r = redaction_for([("s1", {"card": {"number": CARD, "pin": 98765}}, ("/card",))])
        assert r is not None

        out = r.apply(
            {"error": f"card {CARD} declined", CARD: 1, "n": 98765, "m": 12, "l": [f"x{CARD}"]},
            "s1",
        )

        assert out == {"error": "card *** declined", MASK: 1, "n": MASK, "m": 12, "l": ["x***"]}

    def test_short_values_are_masked_only_at_their_pointers(self):
        """A masked value under 4 characters is not hunted in text (it would erase everything)."""
        r = redaction_for([("s1", {"code": "1", "pin": 123}, ("/code", "/pin"))])
        assert r is not None

        out = r.apply({"result": {"code": "1", "pin": 123, "n": 1}, "error": "1 of 123"}, "s1")

        assert out == {"result": {"code": MASK, "pin": MASK, "n": 1}, "error": "1 of 123"}

    def test_the_start_of_a_value_at_the_end_of_a_cut_text_goes_too(self):
        """A message cut at its limit inside a masked value loses that piece, if 4+ chars."""
        r = redaction_for([("s1", {"card": CARD}, ("/card",))])
        assert r is not None

        out = r.apply({"error": f"declined {CARD[:9]}", "a": "x 411", "b": "4111 x"}, "s1")

        assert out == {"error": "declined ***", "a": "x 411", "b": "4111 x"}

    def test_a_long_masked_value_costs_time_linear_in_the_text(self):
        """A 200,000-character masked value: built and applied at once, cut end still found."""
        doc = "".join(chr(0x41 + (i * 7919) % 26) for i in range(200_000))
        r = redaction_for([("s1", {"doc": doc}, ("/doc",))])
        assert r is not None

        out = r.apply({"error": f"refused: {doc[:300]}", "whole": f"<{doc}>"}, "s1")

        assert out == {"error": "refused: ***", "whole": "<***>"}


def _proctor():
    p = Proctor.in_memory()

    def simulate(params, call):
        return {"would_charge": params["card"]["number"], "amount": params["amount"]}

    @p.action(
        "card.charge",
        category="payment",
        amount_param="amount",
        mask=["/card/number"],
        params=SCHEMA,
        baselines=LOW,
        simulate=simulate,
    )
    def charge(params, call):
        if params["amount"] == 13:
            raise ValueError(f"card {params['card']['number']} declined by issuer")
        return {"status": "ok", "card": params["card"]["number"], "echo": params["card"]}

    return p


class TestMaskedValuesInEvents:
    def test_result_error_reasons_and_simulation_are_redacted(self):
        """The masked number reaches no event: not a result, error, reason nor simulation."""
        p = _proctor()
        card = {"card": {"number": CARD}}
        done = p.submit(make_plan([("card.charge", {**card, "amount": 12})]))
        failed = p.submit(make_plan([("card.charge", {**card, "amount": 13})]))
        simulated = p.submit(make_plan([("card.charge", {**card, "amount": 11})]), sandbox=True)

        bodies = {
            r.plan_id: [orjson.loads(e.body) for e in p.events(plan_id=r.plan_id)]
            for r in (done, failed, simulated)
        }
        raw = b"".join(e.body for e in p.events(limit=1000))

        assert CARD.encode() not in raw
        (ok,) = [b for b in bodies[done.plan_id] if b["type"] == "step.succeeded"]
        assert ok["data"]["result"] == {"status": "ok", "card": MASK, "echo": {"number": MASK}}
        (err,) = [b for b in bodies[failed.plan_id] if b["type"] == "step.failed"]
        assert err["data"]["error"] == "ValueError: card *** declined by issuer"
        (fin,) = [b for b in bodies[failed.plan_id] if b["type"] == "plan.finished"]
        assert fin["data"]["reason"] == "step s1 failed: ValueError: card *** declined by issuer"
        (sim,) = [b for b in bodies[simulated.plan_id] if b["type"] == "simulation.completed"]
        assert sim["data"]["effects"]["s1"] == {"would_charge": MASK, "amount": 11}
        assert p.verify().ok

    def test_an_error_cut_inside_a_masked_value_keeps_none_of_it(self):
        """A handler's error cut at MAX_ERROR in the middle of the card logs no digit of it."""
        p = _proctor()

        @p.action("card.check", category="payment", mask=["/card"], baselines=LOW)
        def check(params, call):
            pad = "x" * (MAX_ERROR - len("ValueError: ") - 10)
            raise ValueError(f"{pad}{params['card']}")

        rec = p.submit(make_plan([("card.check", {"card": CARD})]))

        bodies = [orjson.loads(e.body) for e in p.events(plan_id=rec.plan_id)]
        (err,) = [b for b in bodies if b["type"] == "step.failed"]
        assert err["data"]["error"].endswith("x***")
        assert CARD[:10].encode() not in b"".join(e.body for e in p.events(plan_id=rec.plan_id))

    def test_a_plan_without_masks_is_untouched(self):
        """A plan of unmasked actions logs its results as they are, with plain hashes."""
        p = _proctor()

        @p.action("echo", category="read", params={"type": "object"}, baselines=LOW)
        def echo(params, call):
            return {"said": CARD}

        rec = p.submit(make_plan([("echo", {"x": CARD})]))

        bodies = [orjson.loads(e.body) for e in p.events(plan_id=rec.plan_id)]
        (ok,) = [b for b in bodies if b["type"] == "step.succeeded"]
        assert ok["data"]["result"] == {"said": CARD}
        assert ok["actions_attempted"][0]["payload_hash"] == payload_hash({"x": CARD})
        assert bodies[0]["plan"]["digest"] == rec.digest


class TestKeyedHashes:
    def test_masked_params_cannot_be_guessed_from_the_log(self):
        """No hash in the log of a masked step is a plain SHA-256 an attacker could recompute."""
        p = Proctor.in_memory()
        params = {"amount": 100, "currency": "EUR", "traveller": "al", "card_last4": "4242"}
        plan = make_plan([("travel.pay", params)])
        rec = p.submit(plan)

        bodies = [orjson.loads(e.body) for e in p.events(plan_id=rec.plan_id)]
        key = p.gateway._payload_key
        hashes = {a["payload_hash"] for b in bodies for a in b["actions_attempted"]}
        assert hashes == {keyed_payload_hash(key, params)}
        assert payload_hash(params) not in hashes
        digests = {b["plan"]["digest"] for b in bodies}
        assert digests == {keyed_payload_hash(key, {"digest": rec.digest})}
        for b in bodies:
            if "result_hash" in b["data"]:
                assert b["data"]["result_hash"].startswith("hmac-sha256:")

    def test_the_intent_of_a_masked_plan_is_keyed_and_redacted(self):
        """An intent quoting the masked card: its hash is keyed, and a stored prompt redacted."""
        p = Proctor.in_memory(options=GatewayOptions(store_prompt=True))
        params = {"amount": 100, "currency": "EUR", "traveller": "al", "card_last4": "4242"}
        intent = "pay the hotel with the card ending 4242"
        plan = {**make_plan([("travel.pay", params)]), "intent": intent}
        other = {
            **make_plan([("travel.search", {"destination": "LIS", "date": "2026-12-24"})]),
            "intent": intent,
        }

        rec = p.submit(plan)
        plain = p.submit(other)

        key = p.gateway._payload_key
        (body, *_) = [orjson.loads(e.body) for e in p.events(plan_id=rec.plan_id)]
        assert body["prompt_hash"] == keyed_payload_hash(key, {"intent": intent})
        assert body["prompt"] == "pay the hotel with the card ending ***"
        (unmasked, *_) = [orjson.loads(e.body) for e in p.events(plan_id=plain.plan_id)]
        assert unmasked["prompt_hash"] == "sha256:" + hashlib.sha256(intent.encode()).hexdigest()
        assert unmasked["prompt"] == intent
        assert p.verify().ok

    def test_keyed_hash_is_an_hmac(self):
        """``hmac-sha256:`` is HMAC-SHA256 over the canonical params, as docs/audit.md says."""
        import hmac

        from proctor.core.canonical import canonical

        key = b"k" * 32
        expected = hmac.new(key, canonical({"a": 1}), hashlib.sha256).hexdigest()

        assert keyed_payload_hash(key, {"a": 1}) == "hmac-sha256:" + expected


class TestPayloadKey:
    @pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
    def test_created_once_with_mode_0600(self, tmp_path):
        """The key file is made on first use, private, and read back unchanged after."""
        ring = Keyring(tmp_path / "keys")

        first = ring.payload_key()
        again = Keyring(tmp_path / "keys").payload_key()

        assert first == again and len(first) == 32
        mode = stat.S_IMODE((tmp_path / "keys" / "payload-hmac.key").stat().st_mode)
        assert mode == 0o600
        assert not [f for f in (tmp_path / "keys").iterdir() if f.name.endswith(".tmp")]
