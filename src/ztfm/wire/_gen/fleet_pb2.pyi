from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("purpose", "method", "round_id", "device_id", "nonce", "timestamp_ms", "payload_sha256", "key_id", "signature", "resource")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    method: str
    round_id: int
    device_id: str
    nonce: bytes
    timestamp_ms: int
    payload_sha256: bytes
    key_id: str
    signature: bytes
    resource: str
    def __init__(self, purpose: _Optional[str] = ..., method: _Optional[str] = ..., round_id: _Optional[int] = ..., device_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., resource: _Optional[str] = ...) -> None: ...

class SignedRequest(_message.Message):
    __slots__ = ("envelope", "payload")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    payload: bytes
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...

class EnrollReply(_message.Message):
    __slots__ = ("cert_der", "ca_cert_der")
    CERT_DER_FIELD_NUMBER: _ClassVar[int]
    CA_CERT_DER_FIELD_NUMBER: _ClassVar[int]
    cert_der: bytes
    ca_cert_der: bytes
    def __init__(self, cert_der: _Optional[bytes] = ..., ca_cert_der: _Optional[bytes] = ...) -> None: ...
