"""``ztfm policy``: validate Cedar policy files and evaluate a request against them."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("policy")
def policy() -> None:
    """Zero-trust policy (Cedar): deny by default, per-segment least privilege.

    Validate a policy file against the ztfm schema, print the shipped default, or evaluate one
    request (principal URI, action, resource, trust context) and see the decision and reason.
    """


@policy.command("check")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
def check(path: Path) -> None:
    """Parse and schema-validate a policy file."""
    from ztfm.audit import MemoryAuditSink
    from ztfm.policy import PolicyEngine

    PolicyEngine(MemoryAuditSink(), path)
    click.echo(f"ok: {path}")


@policy.command("default")
def default() -> None:
    """Print the shipped default policy."""
    from ztfm.policy import default_policy_text

    click.echo(default_policy_text(), nl=False)


@policy.command("eval")
@click.option(
    "--policy",
    "path",
    type=click.Path(path_type=Path, exists=True),
    help="Policy file (default: the shipped one).",
)
@click.option("--principal", required=True, help="SPIFFE URI of the caller.")
@click.option("--action", required=True)
@click.option("--kind", "kind", required=True, help="Resource kind: round, update, model, ...")
@click.option("--segment", required=True, help="Segment that owns the resource.")
@click.option("--trust", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--attested/--not-attested", default=True, show_default=True)
@click.option("--attestation-age-s", type=click.FloatRange(min=0), default=0.0)
@click.option("--revoked", is_flag=True)
@click.option("--quarantined", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def eval_(
    path: Path | None,
    principal: str,
    action: str,
    kind: str,
    segment: str,
    trust: float,
    attested: bool,
    attestation_age_s: float,
    revoked: bool,
    quarantined: bool,
    as_json: bool,
) -> None:
    """Evaluate one request; exit 1 with the reason if it is denied."""
    from ztfm.audit import MemoryAuditSink
    from ztfm.identity import Identity
    from ztfm.policy import AccessRequest, PolicyEngine, Resource, TrustContext
    from ztfm.types import SystemClock

    ident = Identity.from_uri(principal)
    eng = PolicyEngine(MemoryAuditSink(), path)
    req = AccessRequest(
        ident,
        action,
        Resource(kind, ident.fleet, segment),
        TrustContext(trust, attested, attestation_age_s, revoked, quarantined),
    )
    d = eng.authorize(req, SystemClock().now())
    click.echo(
        json.dumps({"allowed": d.allowed, "reason": d.reason}) if as_json else f"allow: {d.reason}"
    )


eval_.name = "eval"
