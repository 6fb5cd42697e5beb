"""An audit ``Signer`` whose private key stays in AWS KMS.

Two kinds of KMS key are accepted (see docs/audit-signers.md):

* ``ECC_NIST_EDWARDS25519`` with ``ED25519_SHA_512`` (PureEdDSA, RFC 8032): a drop-in for
  the local keyring. The signatures are ordinary 64-byte Ed25519 signatures, so events
  verify with ``verify_events`` and checkpoints sign and open as C2SP notes; the key id is
  ``key_id_for(raw public key)``, exactly as for a local key.
* ``ECC_NIST_P256`` with ``ECDSA_SHA_256``: signatures are ASN.1 DER ECDSA signatures and
  the public key is the DER SubjectPublicKeyInfo, under a key id ``ecdsa-p256:<16 hex>``.
  Events signed this way need an ECDSA-aware verifier (``verify_events`` checks Ed25519
  only; its chain-only mode still works), and C2SP checkpoints cannot be signed with it
  (``sign_note`` is Ed25519-only). It exists for KMS regions and emulators without EdDSA.

Both use ``MessageType="RAW"``, so KMS caps a message at 4096 bytes: a larger event cannot
be signed and ``sign`` raises ``StorageError``. Every signature KMS returns is verified
locally before it is handed out, so a misbehaving KMS (or emulator) cannot get a
signature that does not verify into the log.

boto3 is an optional dependency, imported on first use. No botocore exception leaves this
module: they are wrapped in ``ConfigError`` (wrong key, no credentials, access denied) or
``StorageError`` (KMS unreachable, throttled, failing).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from typing import Any, Final

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proctor.audit.keys import key_id_for
from proctor.errors import ConfigError, MissingDependencyError, ProctorError, StorageError

__all__ = [
    "ECDSA_P256",
    "ED25519",
    "KMS_MAX_MESSAGE",
    "AwsKmsSigner",
    "aws_errors",
    "ecdsa_key_id_for",
    "make_client",
    "wrap_aws_error",
]

ED25519: Final = "ed25519"
ECDSA_P256: Final = "ecdsa-p256"
KMS_MAX_MESSAGE: Final = 4096
"""The largest message KMS signs with ``MessageType="RAW"``."""

# KMS key spec -> (our algorithm name, KMS signing algorithm).
_SPECS: Final = {
    "ECC_NIST_EDWARDS25519": (ED25519, "ED25519_SHA_512"),
    "ECC_NIST_P256": (ECDSA_P256, "ECDSA_SHA_256"),
}

# KMS error codes that mean "fix the configuration" rather than "try again later".
_CONFIG_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "DisabledException",
        "IncorrectKeyException",
        "InvalidKeyUsageException",
        "InvalidArnException",
        "KMSInvalidStateException",
        "NotFoundException",
        "UnrecognizedClientException",
        "ValidationException",
        "InvalidSignatureException",
        "ExpiredTokenException",
    }
)
_CONFIG_BOTO_ERRORS: Final = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "NoRegionError",
    "ProfileNotFound",
    "InvalidRegionError",
    "ParamValidationError",
)


def ecdsa_key_id_for(spki_der: bytes) -> str:
    """Return the event key id of an ECDSA P-256 key: ``ecdsa-p256:`` + SHA-256(SPKI)[:16 hex].

    Hashing the DER SubjectPublicKeyInfo matches how C2SP signed-note type 0x02 derives
    ECDSA key ids.
    """
    return f"{ECDSA_P256}:" + hashlib.sha256(spki_der).hexdigest()[:16]


def _import(name: str, *, extra: str = "aws") -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} is not installed; the AWS integrations need it",
            hint=f"pip install 'proctor[{extra}]'",
        ) from exc


def make_client(
    service: str, *, endpoint_url: str | None = None, region_name: str | None = None
) -> Any:
    """Return a boto3 client with bounded retries and timeouts.

    Raises:
        MissingDependencyError: boto3 is not installed.
        ConfigError: boto3 cannot build a client (unknown region, bad endpoint URL).
    """
    boto3 = _import("boto3")
    config = _import("botocore.config").Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30
    )
    errors: tuple[type[Exception], ...] = (*aws_errors(), ValueError)  # ValueError: bad URL
    try:
        # A session of its own: boto3's default session caches credentials and is not
        # thread-safe.
        session = boto3.session.Session(region_name=region_name)
        return session.client(service, endpoint_url=endpoint_url, config=config)
    except errors as exc:
        raise ConfigError(
            f"cannot create an AWS {service} client: {exc}",
            field=service,
            hint="check the region (AWS_REGION or region_name) and the endpoint URL",
        ) from exc


def wrap_aws_error(exc: Exception, what: str, *, field: str) -> ProctorError:
    """Turn a boto3/botocore exception into a ``ConfigError`` or ``StorageError``.

    Args:
        exc: The exception boto3 raised.
        what: What was being done, for the message ("sign with KMS key X").
        field: The configuration field the error is about.

    Returns:
        The error to raise (``from exc``).
    """
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error") or {}
        code = str(error.get("Code", "")) or "unknown"
        message = str(error.get("Message", "")) or str(exc)
        text = f"cannot {what}: {code}: {message}"
        if code in _CONFIG_CODES:
            return ConfigError(text, field=field, aws_code=code)
        return StorageError(text, field=field, aws_code=code)
    name = type(exc).__name__
    if name in _CONFIG_BOTO_ERRORS:
        return ConfigError(
            f"cannot {what}: {exc}",
            field=field,
            hint="configure AWS credentials and region (environment, profile or role)",
        )
    return StorageError(f"cannot {what}: {name}: {exc}", field=field)


def aws_errors() -> tuple[type[Exception], ...]:
    """Return the botocore exception classes to catch around a boto3 call.

    Raises:
        MissingDependencyError: botocore is not installed.
    """
    exceptions = _import("botocore.exceptions")
    return (exceptions.BotoCoreError, exceptions.ClientError)


class AwsKmsSigner:
    """The ``Signer`` port over an asymmetric AWS KMS key.

    Args:
        key_id: The KMS key: key id, key ARN, alias name (``alias/...``) or alias ARN.
        client: A boto3 KMS client to use; when given, ``endpoint_url`` and ``region_name``
            are ignored.
        endpoint_url: A KMS endpoint (a VPC endpoint, LocalStack, moto).
        region_name: The AWS region; default from the environment.
        public_keys: Public keys of earlier signing keys by event key id (after a
            rotation), returned by ``public_keys`` with this key's own.

    Raises:
        ConfigError: The key does not exist, is not enabled, is not an asymmetric signing
            key of a supported spec, or credentials are missing or denied.
        StorageError: KMS could not be reached or failed.
        MissingDependencyError: boto3 is not installed.
    """

    __slots__ = (
        "_algorithm",
        "_client",
        "_ecdsa",
        "_errors",
        "_event_key_id",
        "_kms_key_arn",
        "_public",
        "_public_key",
        "_signing_algorithm",
        "_verify_key",
    )

    def __init__(
        self,
        key_id: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        public_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        if not key_id:
            raise ConfigError("no KMS key id given", field="kms_key_id")
        self._errors = aws_errors()
        self._client = (
            client
            if client is not None
            else make_client("kms", endpoint_url=endpoint_url, region_name=region_name)
        )
        meta = self._call(f"describe KMS key {key_id!r}", "describe_key", KeyId=key_id)
        meta = meta.get("KeyMetadata", {})
        arn = str(meta.get("Arn") or key_id)
        state, usage = meta.get("KeyState"), meta.get("KeyUsage")
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec")
        if state != "Enabled":
            raise ConfigError(
                f"KMS key {arn} is {state or 'not enabled'}; it must be Enabled to sign",
                field="kms_key_id",
                hint="enable the key (aws kms enable-key) or configure another one",
            )
        if usage != "SIGN_VERIFY" or spec not in _SPECS:
            raise ConfigError(
                f"KMS key {arn} ({spec}, {usage}) is not a supported signing key",
                field="kms_key_id",
                hint="create it with KeyUsage=SIGN_VERIFY and KeySpec=ECC_NIST_EDWARDS25519 "
                "(or ECC_NIST_P256 where EdDSA is unavailable)",
            )
        self._algorithm, self._signing_algorithm = _SPECS[spec]
        allowed = meta.get("SigningAlgorithms")
        if allowed is not None and self._signing_algorithm not in allowed:
            raise ConfigError(
                f"KMS key {arn} does not offer {self._signing_algorithm} (it offers {allowed})",
                field="kms_key_id",
            )
        self._kms_key_arn = arn
        der = self._call(f"get the public key of KMS key {arn}", "get_public_key", KeyId=arn)
        self._load_public_key(der.get("PublicKey"))
        self._public = dict(public_keys or {})
        self._public[self._event_key_id] = self._public_key

    def _load_public_key(self, der: Any) -> None:
        if not isinstance(der, bytes | bytearray):
            raise StorageError(f"KMS returned no public key for {self._kms_key_arn}")
        try:
            public = serialization.load_der_public_key(bytes(der))
        except ValueError as exc:
            raise StorageError(
                f"KMS returned an unreadable public key for {self._kms_key_arn}: {exc}"
            ) from exc
        self._verify_key: nacl.signing.VerifyKey | None = None
        self._ecdsa: ec.EllipticCurvePublicKey | None = None
        if self._algorithm == ED25519 and isinstance(public, Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._public_key = raw
            self._event_key_id = key_id_for(raw)
            self._verify_key = nacl.signing.VerifyKey(raw)
        elif (
            self._algorithm == ECDSA_P256
            and isinstance(public, ec.EllipticCurvePublicKey)
            and isinstance(public.curve, ec.SECP256R1)
        ):
            spki = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self._public_key = spki
            self._event_key_id = ecdsa_key_id_for(spki)
            self._ecdsa = public
        else:
            raise StorageError(
                f"the public key of KMS key {self._kms_key_arn} does not match its "
                f"key spec ({self._algorithm})"
            )

    def _call(self, what: str, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = getattr(self._client, method)(**kwargs)
        except self._errors as exc:
            raise wrap_aws_error(exc, what, field="kms_key_id") from exc
        return dict(response)

    @property
    def key_id(self) -> str:
        """The event key id (``ed25519:<16 hex>`` or ``ecdsa-p256:<16 hex>``)."""
        return self._event_key_id

    @property
    def kms_key_arn(self) -> str:
        """The ARN of the KMS key that signs."""
        return self._kms_key_arn

    @property
    def algorithm(self) -> str:
        """``ed25519`` or ``ecdsa-p256``."""
        return self._algorithm

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 key, or the DER SubjectPublicKeyInfo for ECDSA P-256."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the KMS key and check the signature before returning it.

        Returns:
            A 64-byte Ed25519 signature, or a DER ECDSA signature for a P-256 key.

        Raises:
            StorageError: ``data`` is over 4096 bytes, KMS failed, or its signature does
                not verify with the key's public key.
            ConfigError: KMS refused (key disabled or deleted, access denied).
        """
        if len(data) > KMS_MAX_MESSAGE:
            raise StorageError(
                f"AWS KMS signs at most {KMS_MAX_MESSAGE} bytes; this message is {len(data)}",
                field="kms_key_id",
                hint="keep audit events under 4 KiB or sign with the local keyring",
            )
        response = self._call(
            f"sign with KMS key {self._kms_key_arn}",
            "sign",
            KeyId=self._kms_key_arn,
            Message=data,
            MessageType="RAW",
            SigningAlgorithm=self._signing_algorithm,
        )
        signature = response.get("Signature")
        if not isinstance(signature, bytes | bytearray) or not self._verifies(
            data, bytes(signature)
        ):
            raise StorageError(
                f"KMS key {self._kms_key_arn} returned a signature that does not verify "
                f"with its public key ({self._event_key_id})",
                field="kms_key_id",
            )
        return bytes(signature)

    def _verifies(self, data: bytes, signature: bytes) -> bool:
        if self._verify_key is not None:
            if len(signature) != 64:
                return False
            try:
                self._verify_key.verify(data, signature)
            except nacl.exceptions.BadSignatureError:
                return False
            return True
        assert self._ecdsa is not None
        try:
            self._ecdsa.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def public_keys(self) -> Mapping[str, bytes]:
        """Return this key's public key and any earlier ones passed in, by event key id."""
        return dict(self._public)
