"""Request binding: each envelope field tampered, replay, stale, unknown key, identity mismatch."""

from __future__ import annotations

import dataclasses

import pytest
from idfix import T0, Device

from ztfm.errors import ReplayDetected, RequestRejected, StaleRequest, UnknownKey
from ztfm.identity import (
    Envelope,
    InMemoryKeyRegistry,
    MemoryKeyStore,
    NonceCache,
    RequestVerifier,
    sign_request,
)

PAYLOAD = b"model-update-bytes"


@pytest.fixture
def registry(cam1: Device, cam2: Device) -> InMemoryKeyRegistry:
    reg = InMemoryKeyRegistry()
    reg.register(cam1.keys.public_key, cam1.identity)
    reg.register(cam2.keys.public_key, cam2.identity)
    return reg


@pytest.fixture
def verifier(registry: InMemoryKeyRegistry) -> RequestVerifier:
    return RequestVerifier(registry, max_age_s=30, skew_s=5)


def _env(dev: Device, now: float = T0, payload: bytes = PAYLOAD, **kw: object) -> Envelope:
    return sign_request(dev.keys, "SubmitUpdate", 7, dev.identity.device_id, payload, now, **kw)  # type: ignore[arg-type]


def test_valid_request_passes_once(verifier: RequestVerifier, cam1: Device) -> None:
    env = _env(cam1)
    assert verifier.verify(env, PAYLOAD, cam1.identity, T0, "SubmitUpdate") is None
    with pytest.raises(ReplayDetected):
        verifier.verify(env, PAYLOAD, cam1.identity, T0 + 1, "SubmitUpdate")


@pytest.mark.parametrize(
    "field,value",
    [
        ("purpose", "ztfm/other"),
        ("method", "GetModel"),
        ("round_id", 8),
        ("device_id", "cam-2"),
        ("nonce", b"\x01" * 16),
        ("timestamp_ms", int(T0 * 1000) + 1),
        ("payload_sha256", b"\x00" * 32),
        ("signature", b"\x30" + b"\x00" * 70),
        ("resource", "model:plcs"),
    ],
)
def test_each_tampered_field_is_rejected(
    verifier: RequestVerifier, cam1: Device, field: str, value: object
) -> None:
    env = dataclasses.replace(_env(cam1), **{field: value})
    with pytest.raises(RequestRejected):
        verifier.verify(env, PAYLOAD, cam1.identity, T0)


def test_tampered_payload(verifier: RequestVerifier, cam1: Device) -> None:
    with pytest.raises(RequestRejected, match="payload"):
        verifier.verify(_env(cam1), PAYLOAD + b"x", cam1.identity, T0)


def test_unknown_key_rejected_before_signature(verifier: RequestVerifier, cam1: Device) -> None:
    stranger = MemoryKeyStore()
    env = sign_request(stranger, "SubmitUpdate", 7, "cam-1", PAYLOAD, T0)
    with pytest.raises(UnknownKey):
        verifier.verify(env, PAYLOAD, cam1.identity, T0)
    # an unknown key with garbage signature is still UnknownKey (no signature work done)
    junk = dataclasses.replace(env, signature=b"")
    with pytest.raises(UnknownKey):
        verifier.verify(junk, PAYLOAD, cam1.identity, T0)


def test_replay_checked_before_staleness(verifier: RequestVerifier, cam1: Device) -> None:
    env = _env(cam1)
    verifier.verify(env, PAYLOAD, cam1.identity, T0)
    with pytest.raises(ReplayDetected):
        verifier.verify(env, PAYLOAD, cam1.identity, T0 + 34)
    # after the window the nonce is forgotten, and the message is stale instead
    with pytest.raises(StaleRequest):
        verifier.verify(env, PAYLOAD, cam1.identity, T0 + 36)


def test_stale_and_future(verifier: RequestVerifier, cam1: Device) -> None:
    with pytest.raises(StaleRequest):
        verifier.verify(_env(cam1, now=T0 - 40), PAYLOAD, cam1.identity, T0)
    with pytest.raises(StaleRequest):
        verifier.verify(_env(cam1, now=T0 + 10), PAYLOAD, cam1.identity, T0)
    assert verifier.verify(_env(cam1, now=T0 + 4), PAYLOAD, cam1.identity, T0) is None


def test_signer_differs_from_cert_identity(
    verifier: RequestVerifier, cam1: Device, cam2: Device
) -> None:
    # cam2 signs correctly with its own key but arrives on cam1's TLS connection
    env = sign_request(cam2.keys, "SubmitUpdate", 7, "cam-2", PAYLOAD, T0)
    with pytest.raises(RequestRejected, match="signer"):
        verifier.verify(env, PAYLOAD, cam1.identity, T0)


def test_device_claims_another_id(verifier: RequestVerifier, cam1: Device) -> None:
    env = sign_request(cam1.keys, "SubmitUpdate", 7, "cam-2", PAYLOAD, T0)
    with pytest.raises(RequestRejected, match="claimed device id"):
        verifier.verify(env, PAYLOAD, cam1.identity, T0)


def test_wrong_method_for_endpoint(verifier: RequestVerifier, cam1: Device) -> None:
    with pytest.raises(RequestRejected, match="signed for"):
        verifier.verify(_env(cam1), PAYLOAD, cam1.identity, T0, expected_method="GetModel")


def test_failed_request_does_not_burn_nonce(verifier: RequestVerifier, cam1: Device) -> None:
    env = _env(cam1)
    with pytest.raises(RequestRejected):
        verifier.verify(env, PAYLOAD + b"!", cam1.identity, T0)
    assert verifier.verify(env, PAYLOAD, cam1.identity, T0) is None


@pytest.mark.parametrize(
    "field,value",
    [
        ("purpose", ""),
        ("method", "x" * 200),
        ("device_id", "a\nb"),
        ("round_id", -1),
        ("timestamp_ms", 2**63),
        ("nonce", b"short"),
        ("payload_sha256", b"\x00" * 31),
        ("key_id", "ABCD"),
        ("signature", b"\x00" * 200),
    ],
)
def test_malformed_envelope_cannot_be_built(cam1: Device, field: str, value: object) -> None:
    with pytest.raises(RequestRejected):
        dataclasses.replace(_env(cam1), **{field: value})


def test_nonce_cache_is_bounded_and_fails_closed() -> None:
    cache = NonceCache(window_s=10, capacity=2)
    cache.add("k", b"a" * 16, T0, T0)
    cache.add("k", b"b" * 16, T0, T0)
    with pytest.raises(RequestRejected, match="full"):
        cache.add("k", b"c" * 16, T0, T0)
    cache.add("k", b"c" * 16, T0 + 20, T0 + 20)  # the old ones expired and were evicted
    assert len(cache) == 1


def test_registry_refuses_rebinding_a_key(cam1: Device, cam2: Device) -> None:
    reg = InMemoryKeyRegistry()
    reg.register(cam1.keys.public_key, cam1.identity)
    with pytest.raises(RequestRejected):
        reg.register(cam1.keys.public_key, cam2.identity)


def test_signed_bytes_are_unambiguous(cam1: Device) -> None:
    a = dataclasses.replace(_env(cam1), method="ab", device_id="c")
    b = dataclasses.replace(a, method="a", device_id="bc")
    assert a.signed_bytes() != b.signed_bytes()


def test_replay_after_restart_is_refused(registry: InMemoryKeyRegistry, cam1: Device) -> None:
    env = _env(cam1, now=T0)
    first = RequestVerifier(registry, max_age_s=30, skew_s=5)
    first.verify(env, PAYLOAD, cam1.identity, T0)
    # the server restarts 3 s later with an empty nonce cache
    restarted = RequestVerifier(registry, max_age_s=30, skew_s=5, not_before=T0 + 3)
    with pytest.raises(StaleRequest, match="predates"):
        restarted.verify(env, PAYLOAD, cam1.identity, T0 + 4)
    fresh = _env(cam1, now=T0 + 4)
    assert restarted.verify(fresh, PAYLOAD, cam1.identity, T0 + 4) is None
