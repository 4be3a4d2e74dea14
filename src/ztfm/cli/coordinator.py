"""``ztfm coordinator serve``: federated rounds over mutual TLS, until the rounds are done."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ztfm.errors import ConfigError, RoundError

if TYPE_CHECKING:
    from ztfm.coordinator.service import CoordinatorService
    from ztfm.sim.config import SimConfig


def network_config(
    config_path: str | None,
    devices: int | None = None,
    rounds: int | None = None,
    seed: int | None = None,
) -> SimConfig:
    """The simulation config with CLI overrides, checked for what the networked run supports."""
    from ztfm.sim.config import load_config

    cfg = load_config(config_path)
    if devices is not None:
        cfg = replace(cfg, fleet=replace(cfg.fleet, devices=devices))
    if rounds is not None:
        cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=rounds))
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    from ztfm.sim.network import check_network_config

    check_network_config(cfg)
    return cfg


def write_atomic(path: Path, text: str) -> None:
    """A crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def network_metrics(
    cfg: SimConfig,
    service: CoordinatorService,
    n_features: int,
    wall_s: float,
    security: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """``metrics.json`` of a networked run, in the shape ``ztfm simulate`` writes; ``security``
    holds each round's ``excluded`` and security metrics (``CoordinatorScenario.rounds``).

    Each round's summary or failure is looked up by its round number, so a failed round (which
    has no summary) does not shift the later rounds' summaries onto earlier rounds."""
    import numpy as np

    from ztfm.sim.runner import ROUND_PERIOD_S, summarise

    segments = dict(service.coordinator.devices)
    log = service.log
    rounds: list[dict[str, Any]] = []
    for i, evals in enumerate(log.evals):
        n = i + 1
        s = log.closed.get(n)
        # a failed round keeps the model: its version is the one its devices evaluated
        versions = {e.model_version for e in evals.values()}
        version = s.model_version if s is not None else min(versions, default=None)
        rec: dict[str, Any] = {
            "round": n,
            "model_version": version,
            **summarise(evals, segments),
            "excluded": {},
            "accepted": list(s.accepted) if s is not None else [],
            "rejected": dict(s.rejected) if s is not None else {},
            "bytes_up": log.bytes_up[i] if i < len(log.bytes_up) else {},
            "bytes_down": log.bytes_down[i] if i < len(log.bytes_down) else {},
            "wall_s": {},
            **(security[i] if i < len(security) else {}),
        }
        if n in log.failed:
            rec["failed"] = log.failed[n]
        rounds.append(rec)
    comparison: dict[str, Any] = {}
    if rounds:
        comparison = {
            "federated": rounds[-1]["global"],
            "federated_per_segment": rounds[-1]["per_segment"],
        }
    ups = [sum(r["bytes_up"].values()) / max(1, len(r["bytes_up"])) for r in rounds]
    downs = [sum(r["bytes_down"].values()) / max(1, len(r["bytes_down"])) for r in rounds]
    up = float(np.mean(ups)) if ups else 0.0
    down = float(np.mean(downs)) if downs else 0.0
    per_week = 7 * 24 * 3600 / ROUND_PERIOD_S
    return {
        "ztfm_simulate_version": 1,
        "transport": "grpc-mtls",
        "config": cfg.to_dict(),
        "dataset": cfg.fleet.dataset,
        "has_signal": cfg.fleet.dataset == "skab",
        "n_devices": len(segments),
        "n_features": n_features,
        "n_params": int(sum(p.size for p in service.coordinator.params)),
        "devices": [{"id": d, "segment": s} for d, s in sorted(segments.items())],
        "rounds": rounds,
        "rounds_planned": service.rounds,
        "failures": list(log.failures),
        "comparison": comparison,
        "bandwidth": {
            "mean_bytes_up_per_device_per_round": up,
            "mean_bytes_down_per_device_per_round": down,
            "round_period_s": ROUND_PERIOD_S,
            "bytes_up_per_device_per_week": up * per_week,
            "bytes_down_per_device_per_week": down * per_week,
        },
        "wall_s": {"federated": wall_s, "total": wall_s},
    }


MODEL_ID = "ztfm-fleet"


def _signing_key(path: Path) -> Any:
    """Load the key at ``path`` or create it (0600); its public key goes to ``<path>.pub``."""
    from ztfm.crypto.signing import SigningKey
    from ztfm.errors import CryptoError
    from ztfm.identity._fs import atomic_write

    if path.exists():
        try:
            key = SigningKey.from_pem(path.read_bytes())
        except CryptoError as exc:
            raise ConfigError(f"{path}: not a signing key: {exc}") from exc
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = SigningKey.generate()
        atomic_write(path, key.to_pem(), mode=0o600)
    return key


def _releaser(out: Path, architecture: str) -> Any:
    from ztfm.coordinator.server import ModelReleaser
    from ztfm.ledger import Ledger, SqliteLedgerStore

    log_key = _signing_key(out / "keys" / "log.key")
    release_key = _signing_key(out / "keys" / "release.key")
    write_atomic(out / "log.pub", log_key.verify_key.raw.hex() + "\n")
    write_atomic(out / "release.pub", release_key.verify_key.raw.hex() + "\n")
    ledger = Ledger(SqliteLedgerStore(out / "ledger.db"), log_key)
    return ModelReleaser(ledger, release_key, model_id=MODEL_ID, architecture=architecture)


def fleet_attestation(
    tpm_ca: Sequence[Path], golden: Path | None, segments: Sequence[str], audit: Any, ledger: Any
) -> Any:
    """The coordinator's TPM verifier: manufacturer roots, firmware allow-list, fresh nonces."""
    from ztfm.attestation import AttestationVerifier, ReferenceValues, SystemNonceSource
    from ztfm.attestation.firmware import package_image_digest
    from ztfm.coordinator.attest import FleetAttestation

    if not tpm_ca:
        raise ConfigError("--attestation tpm needs --tpm-ca (the TPM manufacturer CA)")
    try:
        roots = [p.read_bytes() for p in tpm_ca]
    except OSError as exc:
        raise ConfigError(f"cannot read a --tpm-ca certificate: {exc}") from exc
    ref = ReferenceValues()
    if golden is not None:
        try:
            table = json.loads(golden.read_text())
            for dtype, versions in table.items():
                for version, digest in versions.items():
                    ref = ref.with_firmware(dtype, version, bytes.fromhex(digest))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(f"{golden}: not a firmware allow-list: {exc}") from exc
    else:
        from ztfm import __version__

        image = package_image_digest()
        for seg in segments:
            ref = ref.with_firmware(seg, __version__, image)
    verifier = AttestationVerifier(
        manufacturer_roots=roots[:1], intermediates=roots[1:], reference=ref,
        nonces=SystemNonceSource(),
    )  # fmt: skip
    return FleetAttestation(verifier, audit, ledger=ledger)


@click.group("coordinator")
def coordinator() -> None:
    """Run the federated coordinator as a network service."""


@coordinator.command("serve")
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Fleet CA directory (`ztfm ca init`).",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="Round RPCs (mTLS).")
@click.option(
    "--enroll-listen", default="127.0.0.1:0", show_default=True, help="Enrolment (TLS + token)."
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=None,
    help="Devices to wait for before round 1 (default: the config's fleet size).",
)
@click.option("--rounds", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--n-features",
    type=click.IntRange(min=1),
    default=None,
    help="Model input width (default: read from the configured dataset).",
)
@click.option(
    "--attestation",
    type=click.Choice(["none", "tpm"]),
    default="none",
    show_default=True,
    help="tpm: devices enrol their TPM 2.0 (EK certificate from --tpm-ca, AK by make/activate "
    "credential) and quote a fresh nonce before every round; only passing devices take part. "
    "none = UNSAFE: every enrolled device counts as attested (a warning is logged).",
)
@click.option(
    "--tpm-ca",
    "tpm_ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    multiple=True,
    help="TPM manufacturer CA certificate(s), PEM (repeat for intermediates).",
)
@click.option(
    "--golden",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help='Firmware allow-list JSON {"<device type>": {"<version>": "<sha256 hex>"}} (default: '
    "this install's code digest for every segment of the fleet).",
)
@click.option("--deadline-s", type=click.FloatRange(min=0.1), default=None)
@click.option("--eval-deadline-s", type=click.FloatRange(min=0.1), default=60.0, show_default=True)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write {fleet, enroll} endpoints here (atomically) once listening.",
)
@click.option(
    "--enrol-timeout-s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Start with the devices registered by then if fewer than --devices came (default: wait).",
)
@click.option(
    "--release/--no-release",
    default=True,
    show_default=True,
    help="Publish each round's model as a signed bundle in OUT/ledger.db, served by GetModel "
    "(public keys: OUT/release.pub, OUT/log.pub).",
)
@click.option(
    "--linger-s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="After the last round, keep serving until every device was told done (at most this).",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="runs/serve")
def serve(
    ca_dir: Path,
    config_path: str | None,
    listen: str,
    enroll_listen: str,
    devices: int | None,
    rounds: int | None,
    seed: int | None,
    n_features: int | None,
    attestation: str,
    tpm_ca: tuple[Path, ...],
    golden: Path | None,
    deadline_s: float | None,
    eval_deadline_s: float,
    ready_file: Path | None,
    enrol_timeout_s: float | None,
    release: bool,
    linger_s: float,
    out: Path,
) -> None:
    """Serve federated rounds over mTLS until the configured rounds are done.

    Devices enrol on the enrolment port with a one-time token (`ztfm ca token`), then pull
    their tasks and push their replies on the round port; every request is authenticated by its
    client certificate, signed, policy-checked and written to OUT/audit.log. Writes
    OUT/metrics.json (and OUT/report.html). SIGINT/SIGTERM stop cleanly.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ztfm.audit import AuditLog, SnapshotStore
    from ztfm.coordinator.server import CoordinatorServer, UnsafeAssumeAttested
    from ztfm.coordinator.service import CoordinatorService
    from ztfm.sim.network import coordinator_scenario, scenario_configured, secure_aggregator
    from ztfm.sim.runner import build_coordinator
    from ztfm.transport.grpc_fleet import LocalFleet

    cfg = network_config(config_path, devices, rounds, seed)
    if deadline_s is not None:
        cfg = replace(cfg, rounds=replace(cfg.rounds, deadline_s=deadline_s))
    from ztfm.sim.fleet import build_fleet

    fl = None
    if (
        n_features is None
        or devices is None
        or scenario_configured(cfg)
        or (attestation == "tpm" and golden is None)
    ):
        fl = build_fleet(cfg.fleet, cfg.detector)
        n_features = n_features or fl.n_features
        devices = devices or len(fl.devices)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc}") from exc
    audit = AuditLog(out / "audit.log")
    fleet = LocalFleet.from_directory(ca_dir, time.time())
    # attacks, robust aggregation, trust and privacy: the scenario simulate builds (sim/network.py)
    # with --attestation tpm only TPM verdicts move trust (no attestation by fiat)
    sc = (
        coordinator_scenario(cfg, fl, audit, time.time, assume_attested=attestation != "tpm")
        if fl is not None
        else None
    )
    releaser = _releaser(out, cfg.detector.name) if release else None
    attest = None  # TPM attestation: Attest RPC, a quote a round, first eligibility gate
    if attestation == "tpm":
        if releaser is None:
            raise ConfigError("--attestation tpm needs --release (devices measure signed bundles)")
        segments = sorted({d.segment for d in fl.devices}) if fl is not None else []
        attest = fleet_attestation(tpm_ca, golden, segments, audit, releaser.ledger)
        if sc is not None and sc.scenario.trust is not None:  # verdicts move trust scores
            attest.trust, attest.trust_log = sc.scenario.trust, sc.scenario.trust_log
    gates = [attest.gate] if attest is not None else []
    coord = (
        sc.coordinator(cfg, n_features, gates)
        if sc is not None
        else build_coordinator(cfg, n_features, None, eligibility=gates)
    )
    service = CoordinatorService(
        coord,
        rounds=cfg.rounds.rounds,
        expected_devices=devices,
        eval_deadline_s=eval_deadline_s,
        on_round=sc.on_round if sc is not None else None,
        attestation=attest,
        # [secagg]: SecAgg+ phases over the same RPCs, each at most the round deadline
        secure=secure_aggregator(cfg, coord.spec.size, sc.scenario if sc is not None else None),
        secure_deadline_s=cfg.rounds.deadline_s,
    )
    server = CoordinatorServer(
        fleet,
        service,
        audit,
        attest if attest is not None else UnsafeAssumeAttested(),
        listen=listen,
        enroll_listen=enroll_listen,
        snapshots=SnapshotStore(out / "snapshots"),
        enrol_timeout_s=enrol_timeout_s,
        releaser=releaser,
        attestation=attest,
        trust_log=sc.scenario.trust_log if sc is not None else None,
    )
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signalled.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    ends = server.start()
    try:
        if ready_file is not None:
            write_atomic(ready_file, ends.to_json())
        click.echo(f"coordinator: rounds on {ends.fleet}, enrolment on {ends.enroll}", err=True)
        while not stop.is_set() and not server.wait(0.2):
            pass
        if not stop.is_set():
            server.linger(linger_s)
    finally:
        reason = f"signal {signalled[0]}" if signalled else "finished"
        server.stop(reason)
        for s, h in old.items():
            signal.signal(s, h)
    m = network_metrics(
        cfg, service, n_features, time.perf_counter() - t0, sc.rounds if sc is not None else ()
    )
    m["interrupted"] = bool(signalled)
    write_atomic(out / "metrics.json", json.dumps(m, indent=1, sort_keys=True))
    if signalled:
        sys.exit(130)
    if len(service.log.evals) < cfg.rounds.rounds:
        raise RoundError(f"only {len(service.log.evals)} of {cfg.rounds.rounds} rounds completed")
    click.echo(f"coordinator: {len(m['rounds'])} rounds done; wrote {out / 'metrics.json'}")
