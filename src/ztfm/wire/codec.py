"""Strict parsing between protobuf messages and ztfm values.

Parse, don't validate: ``decode_signed_request`` returns an ``Envelope`` (whose constructor checks
every field) and the payload, or raises ``RequestRejected``. Oversized input, bytes that are not
the expected message, missing envelopes and unknown fields (which also catch wire-type
confusion) are all rejected.
"""

from __future__ import annotations

from typing import Final

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError, Message

from ztfm.errors import RequestRejected
from ztfm.identity.binding import Envelope
from ztfm.wire._gen import fleet_pb2

DEFAULT_MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
#: Room for the envelope and protobuf framing on top of the payload.
ENVELOPE_OVERHEAD_BYTES: Final = 4096

SIGNED_METHODS: Final = (
    "RenewCert",
    "GetRound",
    "SubmitUpdate",
    "GetModel",
    "GetRevocations",
    "Attest",
)


class MalformedMessage(RequestRejected):
    code = "malformed"


def envelope_to_proto(env: Envelope) -> fleet_pb2.Envelope:
    return fleet_pb2.Envelope(
        purpose=env.purpose,
        method=env.method,
        round_id=env.round_id,
        device_id=env.device_id,
        nonce=env.nonce,
        timestamp_ms=env.timestamp_ms,
        payload_sha256=env.payload_sha256,
        key_id=env.key_id,
        signature=env.signature,
        resource=env.resource,
    )


def envelope_from_proto(msg: fleet_pb2.Envelope) -> Envelope:
    return Envelope(
        purpose=msg.purpose,
        method=msg.method,
        round_id=msg.round_id,
        device_id=msg.device_id,
        nonce=msg.nonce,
        timestamp_ms=msg.timestamp_ms,
        payload_sha256=msg.payload_sha256,
        key_id=msg.key_id,
        signature=msg.signature,
        resource=msg.resource,
    )


def encode_signed_request(env: Envelope, payload: bytes) -> bytes:
    msg = fleet_pb2.SignedRequest(envelope=envelope_to_proto(env), payload=payload)
    return msg.SerializeToString(deterministic=True)


def _no_unknown(msg: Message, what: str) -> None:
    if len(unknown_fields.UnknownFieldSet(msg)):
        raise MalformedMessage(f"{what} has unknown or mistyped fields")


def decode_signed_request(
    raw: bytes, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> tuple[Envelope, bytes]:
    """Parse a ``SignedRequest``; raise ``RequestRejected`` for anything malformed."""
    if not isinstance(raw, bytes):
        raise MalformedMessage("request must be bytes")
    if len(raw) > max_payload_bytes + ENVELOPE_OVERHEAD_BYTES:
        raise MalformedMessage(f"request is larger than {max_payload_bytes} payload bytes")
    try:
        msg = fleet_pb2.SignedRequest.FromString(raw)
    except DecodeError as exc:
        raise MalformedMessage("request is not a valid SignedRequest protobuf") from exc
    _no_unknown(msg, "request")
    if not msg.HasField("envelope"):
        raise MalformedMessage("request has no envelope")
    _no_unknown(msg.envelope, "envelope")
    if len(msg.payload) > max_payload_bytes:
        raise MalformedMessage(f"payload is larger than {max_payload_bytes} bytes")
    try:
        env = envelope_from_proto(msg.envelope)
    except (ValueError, TypeError) as exc:  # pragma: no cover - Envelope raises RequestRejected
        raise MalformedMessage("envelope fields are invalid") from exc
    return env, bytes(msg.payload)


def encode_reply(payload: bytes) -> bytes:
    return fleet_pb2.Reply(payload=payload).SerializeToString()


def decode_reply(raw: bytes, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    if len(raw) > max_payload_bytes + ENVELOPE_OVERHEAD_BYTES:
        raise MalformedMessage("reply is too large")
    try:
        msg = fleet_pb2.Reply.FromString(raw)
    except DecodeError as exc:
        raise MalformedMessage("reply is not a valid Reply protobuf") from exc
    _no_unknown(msg, "reply")
    return bytes(msg.payload)


def encode_enroll_request(csr_der: bytes) -> bytes:
    return fleet_pb2.EnrollRequest(csr_der=csr_der).SerializeToString()


def decode_enroll_request(raw: bytes) -> bytes:
    if len(raw) > 64 * 1024:
        raise MalformedMessage("enrolment request is too large")
    try:
        msg = fleet_pb2.EnrollRequest.FromString(raw)
    except DecodeError as exc:
        raise MalformedMessage("not a valid EnrollRequest protobuf") from exc
    _no_unknown(msg, "enrolment request")
    return bytes(msg.csr_der)


def encode_enroll_reply(cert_der: bytes, ca_cert_der: bytes) -> bytes:
    return fleet_pb2.EnrollReply(cert_der=cert_der, ca_cert_der=ca_cert_der).SerializeToString()


def decode_enroll_reply(raw: bytes) -> tuple[bytes, bytes]:
    try:
        msg = fleet_pb2.EnrollReply.FromString(raw)
    except DecodeError as exc:
        raise MalformedMessage("not a valid EnrollReply protobuf") from exc
    _no_unknown(msg, "enrolment reply")
    return bytes(msg.cert_der), bytes(msg.ca_cert_der)
