"""``ztfm`` entry point: a lazy click group so that ``ztfm --help`` starts fast.

Each command group lives in its own module (``cli/<name>.py``) and is imported only when used.
Exit codes: 0 ok, 1 on a ``ZtfmError`` (one line; traceback with ``-v``), 2 on bad usage.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from ztfm.errors import ZtfmError

# name -> ("module", "attribute", "one-line help"). Add a line here for a new command group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "trust": ("ztfm.cli.trust", "trust", "Explain per-device trust scores, states and quarantine."),
    "ca": ("ztfm.cli.ca", "ca", "Fleet CA: enrolment, short-lived certs, revocation."),
    "audit": ("ztfm.cli.audit", "audit", "Verify and inspect the hash-chained audit log."),
    "policy": ("ztfm.cli.policy", "policy", "Validate and evaluate Cedar zero-trust policies."),
    "simulate": ("ztfm.cli.simulate", "simulate", "Run a whole federated fleet in one process."),
    "detect": ("ztfm.cli.detect", "detect", "Evaluate on-device anomaly detectors on real data."),
    "ledger": ("ztfm.cli.ledger", "ledger", "Identity ledger: Merkle log, signed heads, proofs."),
    "bundle": ("ztfm.cli.bundle", "bundle", "Publish, inspect and verify signed model bundles."),
    "lab": ("ztfm.cli.lab", "lab", "IoT traffic lab: namespaces, real attack tools, pcaps."),
    "attest": ("ztfm.cli.attest", "attest", "TPM 2.0 attestation: swtpm devices, quotes."),
    "coordinator": ("ztfm.cli.coordinator", "coordinator", "Serve federated rounds over mTLS."),
    "device": ("ztfm.cli.device", "device", "Run one fleet device as a process."),
    "up": ("ztfm.cli.up", "up", "A whole fleet as real processes on 127.0.0.1 over mTLS."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        cmd = getattr(module, spec[1])
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[2]) for name, spec in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and full tracebacks.")
@click.version_option(package_name="ztfm")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """ztfm: zero-trust federated threat detection for IoT fleets.

    Devices score their own telemetry with a small on-device model and learn together without
    pooling raw data. Every identity is issued by a fleet CA and attested, every request is
    authorised by policy, every update is signed, privatised and robustly aggregated, and every
    model ships as a signed bundle.

    Options fall back to ZTFM_* environment variables (for example ZTFM_OUT).
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; turn ``ZtfmError`` into one clear line and exit code 1."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        return cli.main(
            args=argv, prog_name="ztfm", auto_envvar_prefix="ZTFM", standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ZtfmError as exc:
        if verbose:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
