"""``ztfm attest``: provision swtpm devices, run real TPM attestation, inspect evidence."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ztfm.errors import ConfigError


@click.group("attest")
def attest() -> None:
    """TPM 2.0 attestation: EK/AK enrolment, measured firmware and model, fresh quotes.

    Devices extend the firmware digest into PCR 8 and every loaded model bundle into PCR 9
    (SHA-256 bank); the verifier checks the EK certificate against the manufacturer CA, binds
    the AK with MakeCredential/ActivateCredential, and verifies nonce-bound quotes against
    golden values. See docs/attestation.md.
    """


@attest.command("provision")
@click.option(
    "--ca-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    envvar="ZTFM_SWTPM_CA",
    help="swtpm-localca directory (created if missing).",
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="TPM state directory to manufacture.",
)
def provision(ca_dir: Path, state_dir: Path) -> None:  # fmt: skip
    """Manufacture a swtpm state with RSA EK, EK certificate and platform certificate."""
    from ztfm.attestation.swtpm import SwtpmCa, provision_swtpm

    ca = SwtpmCa.create(ca_dir)
    provision_swtpm(state_dir, ca)
    click.echo(f"provisioned {state_dir}; manufacturer root: {ca.directory}")


@attest.command("demo")
@click.option("--devices", type=click.IntRange(1, 32), default=3, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option(
    "--tamper",
    type=click.Choice(["none", "firmware", "model"]),
    default="none",
    show_default=True,
    help="Make the last device run tampered firmware or model.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(devices: int, rounds: int, tamper: str, as_json: bool) -> None:  # fmt: skip
    """Start N swtpm devices on 127.0.0.1, enrol them and attest every round."""
    from ztfm.attestation import (
        AttestationVerifier,
        AttestingDevice,
        ReferenceValues,
        SystemNonceSource,
    )
    from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess, provision_swtpm
    from ztfm.attestation.tpm import Tpm
    from ztfm.types import DeviceId

    fw = hashlib.sha256(b"demo firmware 1.0").digest()
    model = hashlib.sha256(b"demo model r1").digest()
    ref = ReferenceValues().with_firmware("demo", "1.0", fw).with_models([model])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ztfm-swtpm-") as tmp:
        ca = SwtpmCa.create(Path(tmp) / "ca")
        procs: list[SwtpmProcess] = []
        tpms: list[Tpm] = []
        try:
            for i in range(devices):
                provision_swtpm(Path(tmp) / f"tpm{i}", ca)
                procs.append(SwtpmProcess(Path(tmp) / f"tpm{i}").start())
                tpms.append(Tpm(procs[-1].tcti))
            verifier = AttestationVerifier(
                manufacturer_roots=[ca.root_cert_pem],
                intermediates=[ca.issuer_cert_pem],
                reference=ref,
                nonces=SystemNonceSource(),
            )
            agents: dict[DeviceId, AttestingDevice] = {}
            for i, tpm in enumerate(tpms):
                dev = AttestingDevice(tpm)
                last = i == devices - 1
                evil = hashlib.sha256(b"tampered").digest()
                dev.measure_firmware(evil if last and tamper == "firmware" else fw)
                dev.measure_model(evil if last and tamper == "model" else model)
                did = DeviceId(f"dev-{i}")
                now = time.time()
                ch = verifier.begin_enrolment(did, "demo", dev.enrolment_request(), now)
                verifier.finish_enrolment(did, dev.activate(ch), time.time())
                agents[did] = dev
            for r in range(rounds):
                for did, dev in agents.items():
                    nonce = verifier.issue_nonce(did, time.time())
                    verdict = verifier.assess_quote(did, dev.quote(nonce), time.time())
                    rows.append({"round": r, "device": did, "ok": verdict.ok,
                                 "reason": verdict.reason, "detail": verdict.detail,
                                 "pcr_digest": verdict.pcr_digest.hex()})  # fmt: skip
        finally:
            for tpm in tpms:
                tpm.close()
            for proc in procs:
                proc.stop()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = "PASS" if row["ok"] else "FAIL"
        click.echo(f"round {row['round']} {row['device']:8} {status} {row['detail']}")


@attest.command("inspect")
@click.argument("evidence", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def inspect(evidence: Path) -> None:
    """Parse a quote evidence JSON file ({attest, signature, log}) and print its fields."""
    from ztfm.attestation import QuoteEvidence
    from ztfm.attestation.structures import QuoteInfo

    try:
        data = json.loads(evidence.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {evidence}: {exc}") from exc
    ev = QuoteEvidence.from_dict(data.get("quote", data) if isinstance(data, dict) else data)
    q = QuoteInfo.from_bytes(ev.attest)
    click.echo(f"signer      {q.qualified_signer.hex()}")
    click.echo(f"nonce       {q.extra_data.hex()}")
    click.echo(f"pcrs        {q.selection}")
    click.echo(f"pcr digest  {q.pcr_digest.hex()}")
    click.echo(f"clock       {q.clock} reset={q.reset_count} restart={q.restart_count}")
    for m in ev.log:
        click.echo(f"log         PCR {m.pcr} {m.digest.hex()} {m.label}")
