"""AwsKmsSigner against moto's KMS, run as a real HTTP server on 127.0.0.1.

moto (5.2.x) has no EdDSA keys: it rejects ``KeySpec=ECC_NIST_EDWARDS25519``. The Ed25519
tests therefore teach the moto server (which runs in this process) that key spec, modelled
on the AWS documentation: ``ED25519_SHA_512`` over a RAW message gives a 64-byte RFC 8032
signature, and GetPublicKey returns a DER SubjectPublicKeyInfo. If a later moto supports
the spec natively, the patch is not applied. The ECDSA P-256 tests use moto as it is.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install 'proctor[aws]'")
moto_server = pytest.importorskip(
    "moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'"
)

import orjson  # noqa: E402
from botocore.config import Config  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from proctor.audit.events import GENESIS, KeyInfo, seal, verify_events  # noqa: E402
from proctor.audit.keys import key_id_for  # noqa: E402
from proctor.audit.kms import AwsKmsSigner, ecdsa_key_id_for  # noqa: E402
from proctor.audit.note import (  # noqa: E402
    Checkpoint,
    open_note,
    sign_note,
    verifiers_from_vkeys,
    vkey,
)
from proctor.core.canonical import canonical  # noqa: E402
from proctor.errors import (  # noqa: E402
    ConfigError,
    InvalidRequestError,
    ProctorError,
    StorageError,
)

REGION = "us-east-1"
pytestmark = pytest.mark.usefixtures("aws_env")
ACCOUNT = "123456789012"  # moto's default account
ED_SPEC = "ECC_NIST_EDWARDS25519"
ORIGIN = "proctor.example/kms-test"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def kms(endpoint: str) -> Any:
    """A boto3 KMS client for the moto server, failing fast."""
    config = Config(retries={"max_attempts": 1})
    return boto3.client("kms", endpoint_url=endpoint, region_name=REGION, config=config)


class _MotoEd25519Key:
    """An EdDSA key for moto's KMS backend, as AWS documents ECC_NIST_EDWARDS25519."""

    def __init__(self) -> None:
        self.private_key = Ed25519PrivateKey.generate()

    def sign(self, message: bytes, signing_algorithm: str) -> bytes:
        assert signing_algorithm == "ED25519_SHA_512", signing_algorithm
        return self.private_key.sign(message)

    def verify(self, message: bytes, signature: bytes, signing_algorithm: str) -> bool:
        try:
            self.private_key.public_key().verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def moto_ed25519(endpoint: str) -> Iterator[None]:
    """Make the (in-process) moto server accept ECC_NIST_EDWARDS25519 keys."""
    models = pytest.importorskip("moto.kms.models")
    if ED_SPEC in models.KeySpec.key_specs():
        yield  # moto supports EdDSA itself now
        return
    backend, key = models.KmsBackend, models.Key
    check = getattr(backend, "_KmsBackend__ensure_valid_key_spec", None)
    algorithms = getattr(key, "signing_algorithms", None)
    generate = getattr(models, "generate_private_key", None)
    if check is None or not isinstance(algorithms, property) or generate is None:
        pytest.skip("cannot add Ed25519 to this moto version's KMS (internals changed)")

    def ensure_valid_key_spec(self: Any, key_spec: str) -> None:
        if key_spec != ED_SPEC:
            check(self, key_spec)

    def generate_private_key(key_spec: str) -> Any:
        return _MotoEd25519Key() if key_spec == ED_SPEC else generate(key_spec)

    def signing_algorithms(self: Any) -> Any:
        if self.key_spec == ED_SPEC:
            return ["ED25519_SHA_512", "ED25519_PH_SHA_512"]
        return algorithms.fget(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "_KmsBackend__ensure_valid_key_spec", ensure_valid_key_spec)
        mp.setattr(models, "generate_private_key", generate_private_key)
        mp.setattr(key, "signing_algorithms", property(signing_algorithms))
        yield


def _create(kms: Any, spec: str) -> dict[str, Any]:
    return kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]


def _events(signer: Any, n: int = 5) -> list[Any]:
    rows, prev = [], GENESIS
    for i in range(n):
        body = {
            "type": "test.event",
            "timestamp": f"2026-01-01T00:00:{i:02d}+00:00",
            "plan_id": f"p{i // 2}",
            "step_id": None,
            "data": {"i": i, "text": "é" * i},
        }
        row = seal(body, seq=i, prev_hash=prev, signer=signer)
        rows.append(row)
        prev = row.hash
    return rows


def _checkpoint_body(rows: list[Any]) -> str:
    root = hashlib.sha256(b"".join(r.body for r in rows)).digest()
    return Checkpoint(origin=ORIGIN, size=len(rows), root=root).body()


# ---------------------------------------------------------------------------- Ed25519


@pytest.mark.usefixtures("moto_ed25519")
class TestEd25519:
    def test_key_id_is_the_local_key_id_of_the_raw_public_key(self, kms, endpoint):
        """The event key id is key_id_for(raw 32-byte key), as for the local keyring."""
        meta = _create(kms, ED_SPEC)
        der = kms.get_public_key(KeyId=meta["KeyId"])["PublicKey"]
        raw = serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        signer = AwsKmsSigner(meta["KeyId"], endpoint_url=endpoint, region_name=REGION)
        assert signer.algorithm == "ed25519"
        assert signer.public_key == raw and len(raw) == 32
        assert signer.key_id == key_id_for(raw)
        assert signer.kms_key_arn == meta["Arn"]
        assert signer.public_keys() == {signer.key_id: raw}

    def test_events_seal_and_verify(self, kms, endpoint):
        """Events sealed through KMS verify with verify_events and the KMS public key."""
        meta = _create(kms, ED_SPEC)
        signer = AwsKmsSigner(meta["Arn"], endpoint_url=endpoint, region_name=REGION)
        rows = _events(signer)
        keys = {signer.key_id: KeyInfo(signer.public_key)}
        report = verify_events(rows, keys)
        assert report.ok and report.events == 5, report
        # And a wrong key is caught as a bad signature, not waved through.
        other = AwsKmsSigner(_create(kms, ED_SPEC)["KeyId"], client=kms)
        wrong = {signer.key_id: KeyInfo(other.public_key)}
        assert verify_events(rows, wrong).problem == "bad_signature"

    def test_checkpoint_note_signs_and_opens(self, kms):
        """A C2SP checkpoint signed by KMS opens with the log's vkey."""
        signer = AwsKmsSigner(_create(kms, ED_SPEC)["KeyId"], client=kms)
        body = _checkpoint_body(_events(signer, 3))
        note = sign_note(body, ORIGIN, signer.sign, signer.public_key)
        verifiers = verifiers_from_vkeys([vkey(ORIGIN, signer.public_key)])
        text, verified = open_note(note, verifiers)
        assert text == body
        assert [name for name, _ in verified] == [ORIGIN]
        assert Checkpoint.parse(text).size == 3

    def test_old_public_keys_are_kept(self, kms):
        """After moving to a new KMS key, the old key's events still verify."""
        old = AwsKmsSigner(_create(kms, ED_SPEC)["KeyId"], client=kms)
        new = AwsKmsSigner(
            _create(kms, ED_SPEC)["KeyId"], client=kms, public_keys=old.public_keys()
        )
        assert set(new.public_keys()) == {old.key_id, new.key_id}
        assert new.key_id != old.key_id
        rows = _events(old, 2)
        keys = {k: KeyInfo(v) for k, v in new.public_keys().items()}
        assert verify_events(rows, keys).ok

    def test_a_signature_that_does_not_verify_is_refused(self, endpoint, kms):
        """If KMS returns a bad signature, sign raises instead of returning it."""
        client = boto3.client("kms", endpoint_url=endpoint, region_name=REGION)
        signer = AwsKmsSigner(_create(kms, ED_SPEC)["KeyId"], client=client)

        def corrupt(parsed: dict[str, Any], **_: Any) -> None:
            parsed["Signature"] = bytes(64)

        client.meta.events.register("after-call.kms.Sign", corrupt)
        with pytest.raises(StorageError, match="does not verify"):
            signer.sign(b"event")


# ---------------------------------------------------------------------------- ECDSA P-256


class TestEcdsaP256:
    def test_events_sign_with_ecdsa(self, kms, endpoint):
        """A P-256 key signs events with DER ECDSA; the chain verifies, signatures need ECDSA."""
        meta = _create(kms, "ECC_NIST_P256")
        signer = AwsKmsSigner(meta["KeyId"], endpoint_url=endpoint, region_name=REGION)
        assert signer.algorithm == "ecdsa-p256"
        assert signer.key_id == ecdsa_key_id_for(signer.public_key)
        assert signer.key_id.startswith("ecdsa-p256:")
        rows = _events(signer)
        keys = {signer.key_id: KeyInfo(signer.public_key)}
        # verify_events checks Ed25519 only: the chain and canonical form still verify.
        assert verify_events(rows, keys, check_signatures=False).ok
        public = serialization.load_der_public_key(signer.public_key)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        for row in rows:
            body = orjson.loads(row.body)
            sig = base64.b64decode(body.pop("signature"))
            public.verify(sig, canonical(body), ec.ECDSA(hashes.SHA256()))

    def test_checkpoints_need_ed25519(self, kms):
        """C2SP checkpoints are Ed25519-only: sign_note refuses a P-256 key clearly."""
        signer = AwsKmsSigner(_create(kms, "ECC_NIST_P256")["KeyId"], client=kms)
        with pytest.raises(InvalidRequestError, match="32 bytes"):
            sign_note(_checkpoint_body(_events(signer, 1)), ORIGIN, signer.sign, signer.public_key)


# ---------------------------------------------------------------------------- errors


class TestErrors:
    def test_unknown_key(self, kms):
        """A key id KMS does not know is a ConfigError naming it."""
        missing = "11111111-2222-3333-4444-555555555555"
        with pytest.raises(ConfigError, match=missing) as info:
            AwsKmsSigner(missing, client=kms)
        assert info.value.details["aws_code"] == "NotFoundException"
        assert info.value.field == "kms_key_id"

    def test_disabled_key(self, kms):
        """A disabled key is refused when the signer is made."""
        meta = _create(kms, "ECC_NIST_P256")
        kms.disable_key(KeyId=meta["KeyId"])
        with pytest.raises(ConfigError, match="Disabled"):
            AwsKmsSigner(meta["KeyId"], client=kms)

    @pytest.mark.parametrize(
        ("spec", "usage"), [("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("RSA_2048", "SIGN_VERIFY")]
    )
    def test_not_a_supported_signing_key(self, kms, spec, usage):
        """Symmetric and RSA keys are refused with a hint on what to create."""
        meta = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
        with pytest.raises(ConfigError, match="not a supported signing key") as info:
            AwsKmsSigner(meta["KeyId"], client=kms)
        assert "ECC_NIST_EDWARDS25519" in (info.value.hint or "")

    def test_key_gone_after_start(self, kms):
        """A key that disappears later makes sign raise a ConfigError, not a botocore error."""
        models = pytest.importorskip("moto.kms.models")
        meta = _create(kms, "ECC_NIST_P256")
        signer = AwsKmsSigner(meta["KeyId"], client=kms)
        # What AWS does once a deletion's waiting period ends; moto cannot delete at once.
        del models.kms_backends[ACCOUNT][REGION].keys[meta["KeyId"]]
        with pytest.raises(ConfigError, match="NotFoundException"):
            signer.sign(b"event")

    def test_message_over_4096_bytes(self, kms):
        """KMS signs at most 4096 RAW bytes; a larger message fails before any call."""
        signer = AwsKmsSigner(_create(kms, "ECC_NIST_P256")["KeyId"], client=kms)
        assert signer.sign(b"x" * 4096)
        with pytest.raises(StorageError, match="at most 4096 bytes"):
            signer.sign(b"x" * 4097)

    def test_no_credentials(self, endpoint, monkeypatch):
        """Missing credentials are a ConfigError that says so."""
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(ConfigError, match="credentials"):
            AwsKmsSigner("any", endpoint_url=endpoint, region_name=REGION)

    def test_unreachable_endpoint(self):
        """KMS that cannot be reached is a StorageError."""
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = boto3.client(
            "kms",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2),
        )
        with pytest.raises(StorageError, match="cannot describe KMS key") as info:
            AwsKmsSigner("any", client=client)
        assert isinstance(info.value, ProctorError)
