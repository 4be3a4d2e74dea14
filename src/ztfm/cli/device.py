"""``ztfm device run``: one device as its own process, training with the fleet over mTLS."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import zlib
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ztfm.errors import ConfigError, DataError, IdentityError

if TYPE_CHECKING:
    from ztfm.crypto.signing import VerifyKey
    from ztfm.identity import Identity
    from ztfm.transport.inproc import Endpoint


def _agent_from_fleet(
    config_path: str | None,
    index: int,
    identity: Identity,
    devices: int | None,
    rounds: int | None,
    seed: int | None,
) -> Endpoint:
    """Exactly fleet member ``index`` of ``build_fleet`` (what ``ztfm simulate`` builds),
    with its scenario: poisoned rows for a data attacker, clip and noise share; with
    ``[secagg]``, behind its SecAgg+ endpoint."""
    from ztfm.cli.coordinator import network_config
    from ztfm.sim.fleet import build_fleet
    from ztfm.sim.network import device_agent, secure_endpoint

    cfg = network_config(config_path, devices, rounds, seed)
    fleet = build_fleet(cfg.fleet, cfg.detector)
    if not 0 <= index < len(fleet.devices):
        raise ConfigError(
            f"--fleet-index {index} is outside the fleet (0..{len(fleet.devices) - 1})"
        )
    spec = fleet.devices[index]
    if (spec.device_id, spec.segment) != (identity.device_id, identity.segment):
        raise ConfigError(
            f"fleet member {index} is {spec.device_id} in {spec.segment}, "
            f"not {identity.device_id} in {identity.segment}"
        )
    if cfg.secagg.enabled:
        return secure_endpoint(cfg, fleet, index)
    return device_agent(cfg, fleet, index)


def _agent_from_file(
    config_path: str | None, path: Path, identity: Identity, devices: int | None, seed: int | None
) -> Endpoint:
    """A device on its own SKAB-style CSV: first 400 rows train (benign), all rows evaluate."""
    import numpy as np

    from ztfm.cli.coordinator import network_config
    from ztfm.data.skab import load_skab_file
    from ztfm.detect.features import FeatureSpec, WindowFeatures
    from ztfm.device.agent import DeviceAgent, DeviceData
    from ztfm.sim.fleet import SKAB_TRAIN_ROWS
    from ztfm.sim.network import file_device_transforms, file_secure_endpoint
    from ztfm.sim.runner import causal_smoother, make_local_model, update_compressor

    cfg = network_config(config_path, devices, None, seed)
    series = load_skab_file(path)
    if series.y is None or len(series) <= SKAB_TRAIN_ROWS:
        raise DataError(f"{path}: needs labels and more than {SKAB_TRAIN_ROWS} rows")
    det = cfg.detector
    spec = FeatureSpec(windows=tuple(det.windows), ewma_alphas=tuple(det.ewma_alphas))
    feats = WindowFeatures(series.x.shape[1], spec).transform(series.x)
    train = feats[:SKAB_TRAIN_ROWS]
    agent = DeviceAgent(
        identity.device_id,
        identity.segment,
        make_local_model(cfg, feats.shape[1]),
        DeviceData(train, train, feats, series.y, series.kinds),
        rng=np.random.default_rng([cfg.seed, 1, zlib.crc32(identity.device_id.encode())]),
        target_far=det.target_far,
        postprocess=causal_smoother(det.smoothing),
        transforms=file_device_transforms(cfg, cfg.fleet.devices),
        compressor=update_compressor(cfg),
    )
    return file_secure_endpoint(cfg, agent) if cfg.secagg.enabled else agent


def _verify_key(path: Path) -> VerifyKey:
    from ztfm.crypto.signing import VerifyKey
    from ztfm.errors import CryptoError

    try:
        return VerifyKey(bytes.fromhex(path.read_text().strip()))
    except (ValueError, OSError, CryptoError) as exc:
        raise ConfigError(f"{path}: not a hex Ed25519 public key: {exc}") from exc


@click.group("device")
def device() -> None:
    """Run a fleet device as a process."""


@device.command("run")
@click.option("--coordinator", "target", required=True, help="Round endpoint HOST:PORT.")
@click.option("--enroll", "enroll_target", default=None, help="Enrolment endpoint HOST:PORT.")
@click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Fleet CA certificate (PEM): the only root this device trusts.",
)
@click.option("--id", "device_id", required=True)
@click.option("--segment", required=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Holds this device's key (0600) and certificate.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="One-time enrolment token (from `ztfm ca token`); needed without a valid cert.",
)
@click.option("--telemetry", default=None, help="SKAB-style CSV file (live IFACE: not yet).")
@click.option("--fleet-index", type=click.IntRange(min=0), default=None)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--devices", type=click.IntRange(min=1), default=None)
@click.option("--rounds", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--release-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Pinned model release key (hex file); with --log-key: install the final signed model.",
)
@click.option(
    "--log-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Pinned ledger log key (hex file).",
)
@click.option(
    "--tpm-tcti",
    default=None,
    help="Attest with this TPM 2.0 (e.g. device:/dev/tpmrm0, or swtpm:host=127.0.0.1,port=N): "
    "enrol its EK/AK with the coordinator and quote a fresh nonce before every round.",
)
@click.option(
    "--swtpm-state",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Development: start a software TPM (swtpm) from this provisioned state on 127.0.0.1 "
    "for this process and attest with it (`ztfm attest provision`).",
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Firmware image measured into PCR 8 (default: the code of this ztfm install).",
)
@click.option("--give-up-s", type=click.FloatRange(min=1), default=120.0, show_default=True)
def run(
    target: str,
    enroll_target: str | None,
    ca_cert: Path,
    device_id: str,
    segment: str,
    state_dir: Path,
    token_file: Path | None,
    telemetry: str | None,
    fleet_index: int | None,
    config_path: str | None,
    devices: int | None,
    rounds: int | None,
    seed: int | None,
    release_key: Path | None,
    log_key: Path | None,
    tpm_tcti: str | None,
    swtpm_state: Path | None,
    firmware: Path | None,
    give_up_s: float,
) -> None:
    """Enrol (if needed), then train with the fleet until the coordinator says done.

    With a TPM (--tpm-tcti or --swtpm-state) the device measures its firmware and every model
    bundle it loads, enrols the TPM with the coordinator and attests before every round; it
    needs --release-key and --log-key (it runs only signed, ledger-recorded models).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    from ztfm.cli.coordinator import MODEL_ID
    from ztfm.crypto.pki import Certificate
    from ztfm.device.runner import DeviceRunner, ModelInstaller
    from ztfm.errors import CryptoError
    from ztfm.identity import FileKeyStore, Identity
    from ztfm.identity._fs import atomic_write

    torch.set_num_threads(1)
    if (telemetry is None) == (fleet_index is None):
        raise ConfigError("give exactly one of --telemetry FILE or --fleet-index K")
    try:
        ca = Certificate.from_pem(ca_cert.read_bytes())
    except (OSError, CryptoError) as exc:
        raise IdentityError(f"{ca_cert}: not a CA certificate: {exc}") from exc
    fleets = [u.removeprefix("spiffe://") for u in ca.uris if u.startswith("spiffe://")]
    if len(fleets) != 1:
        raise IdentityError(f"{ca_cert}: CA certificate names no single spiffe:// trust domain")
    identity = Identity(fleets[0], segment, "device", device_id)
    if fleet_index is not None:
        agent = _agent_from_fleet(config_path, fleet_index, identity, devices, rounds, seed)
    else:
        assert telemetry is not None
        path = Path(telemetry)
        if not path.is_file():
            raise ConfigError(
                f"--telemetry {telemetry}: not a file; live capture (IFACE) is not yet "
                "supported for federated training"
            )
        agent = _agent_from_file(config_path, path, identity, devices, seed)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)  # an existing folder too: it holds the key and the TPM's log
    keys = FileKeyStore(state_dir / "key.pem")
    cert_path = state_dir / "cert.pem"
    cert = None
    if cert_path.exists():
        try:
            cert = Certificate.from_pem(cert_path.read_bytes())
        except CryptoError as exc:
            raise IdentityError(f"{cert_path}: not a certificate: {exc}") from exc
        if cert.public_key != keys.public_key:
            raise IdentityError(f"{cert_path} is not for this device's key")
    token = ""
    if token_file is not None:
        token = token_file.read_text().strip()
    installer = None
    if (release_key is None) != (log_key is None):
        raise ConfigError("give both --release-key and --log-key, or neither")
    if release_key is not None and log_key is not None:
        installer = ModelInstaller(
            state_dir / "model",
            model_id=MODEL_ID,
            release_key=_verify_key(release_key),
            log_key=_verify_key(log_key),
        )
    if tpm_tcti is not None and swtpm_state is not None:
        raise ConfigError("give at most one of --tpm-tcti and --swtpm-state")
    use_tpm = tpm_tcti is not None or swtpm_state is not None
    if use_tpm and installer is None:
        raise ConfigError("attestation needs --release-key and --log-key (measured bundles)")
    stop = threading.Event()
    running = threading.Event()

    def on_signal(_s: int, _f: FrameType | None) -> None:
        stop.set()
        if not running.is_set():  # still setting up (e.g. starting swtpm): unwind now
            raise SystemExit(130)

    # installed before swtpm starts: a SIGTERM then unwinds the stack, which stops swtpm
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as stack:
        attesting = (
            _open_tpm(stack, tpm_tcti, swtpm_state, firmware, state_dir) if use_tpm else None
        )
        if attesting is not None and installer is not None:
            installer.on_install = lambda b: attesting.measure_model(
                b.measurement(), f"model:v{b.version}"
            )
        runner = DeviceRunner(
            identity,
            keys,
            ca,
            agent,
            target,
            np.random.default_rng(),
            cert=cert,
            enroll_target=enroll_target,
            token=token,
            on_cert=lambda c: atomic_write(cert_path, c.to_pem(), mode=0o600),
            give_up_s=give_up_s,
            stop=stop,
            installer=installer,
            attestation=attesting,
        )
        running.set()
        if stop.is_set():
            sys.exit(130)
        stats = runner.run()
        click.echo(
            f"{device_id}: {stats.tasks} tasks, {stats.refused} refused, {stats.renewals} renewals"
            + (f", verified model v{stats.model_version} installed" if stats.model_version else "")
            + (f", {stats.quotes} TPM quotes" if stats.tpm_enrolled else "")
            + (f", {stats.aborted} secure rounds aborted" if stats.aborted else "")
            + (", done" if stats.finished else ", stopped"),
            err=True,
        )
        if not stats.finished:
            sys.exit(130)


def _open_tpm(
    stack: contextlib.ExitStack,
    tcti: str | None,
    swtpm_state: Path | None,
    firmware: Path | None,
    state_dir: Path,
) -> Any:
    """Open the device's TPM (starting a swtpm for --swtpm-state) and measure the firmware,
    or continue the measurement log of an earlier run if the TPM kept its PCRs."""
    from ztfm.attestation.firmware import file_image_digest, package_image_digest
    from ztfm.attestation.swtpm import SwtpmProcess
    from ztfm.device.attest import open_measured_device

    try:
        from ztfm.attestation.tpm import Tpm
    except ImportError as exc:
        raise ConfigError(
            "TPM support needs tpm2-pytss (pip install 'ztfm[tpm]'; Debian libtss2-dev)"
        ) from exc
    if swtpm_state is not None:
        proc = stack.enter_context(SwtpmProcess(swtpm_state))
        tcti = proc.tcti
    assert tcti is not None
    tpm = Tpm(tcti)
    stack.callback(tpm.close)
    if firmware is not None:
        digest, label = file_image_digest(firmware), f"firmware:{firmware.name}"
    else:
        digest, label = package_image_digest(), "firmware:ztfm"
    return open_measured_device(tpm, state_dir, digest, label)
