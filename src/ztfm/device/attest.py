"""The device side of TPM attestation over the network.

``enrol_tpm`` runs the two ``Attest`` calls of enrolment (EK certificate + AK -> MakeCredential
challenge; ActivateCredential secret + first quote over the challenge's nonce).
``AttestingEndpoint`` wraps the device agent: a round's ``AttestTask`` is answered with a TPM
quote over its nonce; every other task goes to the agent. Measurements (firmware at start,
every installed model bundle) are made by the owner of the ``AttestingDevice``
(``cli.device``, ``ModelInstaller``).
"""

from __future__ import annotations

import json

from ztfm.attestation import AttestingDevice, CredentialChallenge
from ztfm.errors import AttestationError
from ztfm.fl import codec
from ztfm.fl.messages import AttestReply, AttestTask
from ztfm.transport.grpc_client import FleetClient, RpcFailed
from ztfm.transport.inproc import Endpoint


def enrol_tpm(client: FleetClient, device: AttestingDevice) -> bool:
    """Enrol this device's TPM with the coordinator; returns whether it is hardware-backed.

    Raises ``AttestationError`` with the coordinator's one-line reason if refused.
    """
    try:
        reply = client.call(
            "Attest",
            json.dumps({"op": "enrol", "request": device.enrolment_request().to_dict()}).encode(),
        )
        try:
            challenge = CredentialChallenge.from_dict(json.loads(reply)["challenge"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AttestationError(f"malformed enrolment challenge: {exc}") from exc
        secret = device.activate(challenge)
        quote = device.quote(challenge.nonce)
        reply = client.call(
            "Attest",
            json.dumps(
                {"op": "activate", "secret": secret.hex(), "quote": quote.to_dict()}
            ).encode(),
        )
    except RpcFailed as exc:
        raise AttestationError(f"coordinator refused TPM enrolment: {exc.details}") from exc
    try:
        return bool(json.loads(reply)["hardware_backed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationError(f"malformed enrolment answer: {exc}") from exc


class AttestingEndpoint:
    """An ``Endpoint`` that answers ``AttestTask``s with TPM quotes and passes the rest on."""

    def __init__(self, inner: Endpoint, device: AttestingDevice, device_id: str) -> None:
        self.inner = inner
        self.device = device
        self.device_id = device_id
        self.quotes = 0

    def handle(self, data: bytes) -> bytes:
        if codec.kind_of(data) is not AttestTask:
            return self.inner.handle(data)
        task = codec.decode(data)
        assert isinstance(task, AttestTask)
        evidence = self.device.quote(task.nonce)
        self.quotes += 1
        reply = AttestReply(
            task.round_id, self.device_id, json.dumps(evidence.to_dict()), task.nonce
        )
        return codec.encode(reply)
