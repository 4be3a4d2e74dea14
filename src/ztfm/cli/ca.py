"""``ztfm ca``: the fleet certificate authority (init, enrolment tokens, CSRs, issue, revoke)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ztfm.types import SystemClock


@click.group("ca")
def ca() -> None:
    """Fleet certificate authority: short-lived SPIFFE-named device certs.

    The CA key stays in DIR (0600). Devices generate their own keys and send a CSR carrying a
    one-time enrolment token; certificates are short-lived (1 h by default) and renewed by the
    agent; revocations are published as a signed, versioned, time-limited list.
    """


@ca.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    required=True,
    help="New CA directory (must not exist or be empty).",
)
@click.option("--fleet", default="fleet.local", show_default=True, help="Fleet (trust domain).")
@click.option("--ttl-days", type=click.FloatRange(min=1), default=5 * 365, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init(directory: Path, fleet: str, ttl_days: float, as_json: bool) -> None:
    """Create a CA key and self-signed certificate in DIR (crash-safe)."""
    from ztfm.identity.store import init_ca

    ca_ = init_ca(directory, fleet, SystemClock().now(), ttl_days * 86400)
    out = {
        "dir": str(directory),
        "fleet": fleet,
        "cert": str(directory / "ca.crt"),
        "fingerprint": ca_.cert.fingerprint(),
        "not_after": ca_.cert.not_after,
    }
    click.echo(
        json.dumps(out)
        if as_json
        else f"CA for fleet {fleet} in {directory} (sha256 {ca_.cert.fingerprint()[:16]}...)"
    )


@ca.command("token")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--segment", required=True)
@click.option(
    "--role",
    type=click.Choice(["device", "gateway", "coordinator"]),
    default="device",
    show_default=True,
)
@click.option("--id", "device_id", required=True)
@click.option("--ttl-s", type=click.FloatRange(min=1), default=86400, show_default=True)
def token(directory: Path, segment: str, role: str, device_id: str, ttl_s: float) -> None:
    """Print a one-time enrolment token for one identity."""
    from ztfm.identity import Identity
    from ztfm.identity.store import ca_transaction

    with ca_transaction(directory) as ca_:
        ident = Identity(ca_.fleet, segment, role, device_id)
        tok = ca_.create_token(ident, SystemClock().now(), ttl_s)
    click.echo(tok)


@ca.command("csr")
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Device key file (created, 0600, if missing).",
)
@click.option("--fleet", required=True)
@click.option("--segment", required=True)
@click.option(
    "--role",
    type=click.Choice(["device", "gateway", "coordinator"]),
    default="device",
    show_default=True,
)
@click.option("--id", "device_id", required=True)
@click.option("--token", default="", help="One-time enrolment token from `ztfm ca token`.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def csr(
    key_path: Path, fleet: str, segment: str, role: str, device_id: str, token: str, out: Path
) -> None:
    """On the device: make (or reuse) its key and write a CSR for its identity."""
    from ztfm.identity import FileKeyStore, Identity

    ks = FileKeyStore(key_path)
    out.write_bytes(ks.make_csr(Identity(fleet, segment, role, device_id), token).to_pem())
    click.echo(f"wrote {out}")


@ca.command("issue")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--csr", "csr_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--ttl-s", type=click.FloatRange(min=1), default=3600, show_default=True)
def issue(directory: Path, csr_path: Path, out: Path, ttl_s: float) -> None:
    """Enrol: check the CSR's token and proof of possession, then write a short-lived cert."""
    from ztfm.crypto.pki import CertificateRequest
    from ztfm.errors import CryptoError, IdentityError
    from ztfm.identity.store import ca_transaction

    try:
        req = CertificateRequest.from_pem(csr_path.read_bytes())
    except CryptoError as exc:
        raise IdentityError(f"{csr_path}: {exc}") from exc
    with ca_transaction(directory) as ca_:
        ident, cert = ca_.enroll(req, SystemClock().now(), ttl_s)
    out.write_bytes(cert.to_pem())
    click.echo(f"issued {ident.uri} serial {cert.serial:x} -> {out}")


@ca.command("revoke")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--serial", help="Certificate serial (hex).")
@click.option("--identity", "uri", help="SPIFFE URI: revoke all its certs and future enrolment.")
def revoke(directory: Path, serial: str | None, uri: str | None) -> None:
    """Revoke a certificate or a whole identity (publish a new list afterwards)."""
    from ztfm.identity import Identity
    from ztfm.identity.store import ca_transaction

    if (serial is None) == (uri is None):
        raise click.UsageError("give exactly one of --serial or --identity")
    with ca_transaction(directory) as ca_:
        if serial is not None:
            try:
                n = int(serial, 16)
            except ValueError as exc:
                raise click.BadParameter("serial must be hex", param_hint="--serial") from exc
            ca_.revoke_serial(n)
        else:
            assert uri is not None
            ca_.revoke_identity(Identity.from_uri(uri))
    click.echo("revoked")


@ca.command("publish")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--ttl-s", type=click.FloatRange(min=1), default=600, show_default=True)
def publish(directory: Path, out: Path, ttl_s: float) -> None:
    """Write a new signed revocation list (version + 1, valid for TTL seconds)."""
    from ztfm.identity.store import ca_transaction

    with ca_transaction(directory) as ca_:
        signed = ca_.publish_revocations(SystemClock().now(), ttl_s)
    out.write_bytes(signed.to_bytes())
    click.echo(f"revocation list v{signed.body.version} -> {out}")


@ca.command("show")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def show(directory: Path, as_json: bool) -> None:
    """Summarise the CA: fleet, issued, revoked, pending tokens."""
    from ztfm.identity.store import load_ca

    ca_ = load_ca(directory)
    out = {
        "fleet": ca_.fleet,
        "fingerprint": ca_.cert.fingerprint(),
        "not_after": ca_.cert.not_after,
        "issued": len(ca_.issued),
        "revoked_serials": len(ca_.revoked_serials),
        "revoked_identities": sorted(ca_.revoked_identities),
        "pending_tokens": len(ca_.tokens),
        "revocation_list_version": ca_.crl_version,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k}: {v}")
