"""`revise keygen`, `revise sign` and `revise verify`: sign a bundle offline, check it anywhere.

Two schemes: a bare EC key (`revise sign --key`, `revise verify --pub`), or a key with its
certificate from a private CA (`revise sign --key --cert --chain`, `revise verify --ca`).

Passwords come from an environment variable named on the command line, never from the command
line itself (it would land in shell history and in the process list).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from revise.cli._common import echo
from revise.errors import UsageError

password_env_option = click.option(
    "--password-env",
    metavar="VAR",
    help="Name of the environment variable that holds the private key's password.",
)


def _password(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UsageError(
            f"--password-env {var}: the environment variable {var} is not set",
            hint=f"set {var} to the key's password first",
        )
    if not value:
        raise UsageError(f"--password-env {var}: the environment variable {var} is empty")
    return value.encode("utf-8")


@click.command("keygen")
@click.option(
    "-o",
    "--out",
    "keydir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for revise-signing.key (private, mode 0600) and revise-signing.pub.",
)
@click.option("--curve", type=click.Choice(["P-256", "P-384"]), default="P-256", show_default=True)
@password_env_option
@click.option("--overwrite", is_flag=True, help="Replace an existing key pair in KEYDIR.")
@click.pass_context
def keygen_cmd(ctx, keydir, curve, password_env, overwrite) -> None:
    """Create an EC key pair for `revise sign`; keep the .key secret, hand out the .pub."""
    from revise.export.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keys

    password = _password(password_env)
    keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
    private, public = keydir / PRIVATE_KEY_NAME, keydir / PUBLIC_KEY_NAME
    generate_keys(private, public, curve=curve, password=password, overwrite=overwrite)
    encrypted = "encrypted, " if password else ""
    click.echo(f"wrote {private} ({curve}, {encrypted}keep it secret) and {public}")


@click.command("sign")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key (PEM) from `revise keygen`, or the one a --cert was issued for.",
)
@password_env_option
@click.option(
    "--cert",
    "--certificate",
    "certificate",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sign with this certificate (PEM) of --key, issued by a private CA.",
)
@click.option(
    "--chain",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --cert: the CA certificate(s) that issued it (PEM, intermediate first); repeatable.",
)
@click.option(
    "--allow-unvalidated",
    is_flag=True,
    help="Sign even if validation failed or never ran (recorded in signing.json).",
)
@click.pass_context
def sign_cmd(ctx, bundle, key_path, password_env, certificate, chain, allow_unvalidated) -> None:
    """Sign every file of BUNDLE; writes BUNDLE/signing.json and BUNDLE/revise.sig.

    Only the bundle as exported and validated is signed: its files must be exactly those
    bundle.json lists, unchanged, and hold the model the report validated; every file but
    bundle.json and the report must be the one `revise validate BUNDLE` recorded (a report of
    the model folder is no verdict on the bundle). Signing a signed bundle again (e.g. with a
    new key) replaces both files.

    With --cert and --chain the signature carries the certificate and its chain and is
    verified against the CA (`revise verify --ca`); signing.json records the certificate's
    subject and fingerprint.
    """
    from revise.export.manifest import SIGNATURE_NAME
    from revise.export.signing import sign_bundle

    password = _password(password_env)
    echo(ctx)(f"signing {bundle} with {certificate or key_path} ...")
    record = sign_bundle(
        bundle,
        key_path,
        password=password,
        allow_unvalidated=allow_unvalidated,
        certificate=certificate,
        chain=chain,
    )
    verdict = record["validation_verdict"] or "not validated"
    forced = ", signed with --allow-unvalidated" if record["allow_unvalidated"] else ""
    click.echo(f"signed {bundle} -> {bundle / SIGNATURE_NAME} (validation: {verdict}{forced})")
    if "certificate" in record:
        signer = record["certificate"]
        click.echo(f"certificate: {signer['subject']} (sha256 {signer['sha256_fingerprint']})")


@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--pub",
    "--public-key",
    "public_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public key (PEM) paired with the bare key that signed the bundle.",
)
@click.option(
    "--ca",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="For a bundle signed with --cert: the private CA's certificate(s) (PEM) to trust; "
    "repeatable. Offline: no revocation check.",
)
@click.pass_context
def verify_cmd(ctx, bundle, public_key, ca) -> None:
    """Check BUNDLE against its signature; exit 1 listing what changed, was added or removed.

    Give --pub for a bundle signed with a bare key, --ca for one signed with a certificate.
    """
    from revise.export.signing import verify_bundle

    result = verify_bundle(bundle, public_key, ca=ca)
    if not result.ok:
        click.echo(f"FAILED: {result.message}")
        for kind in ("changed", "added", "removed"):
            for name in getattr(result, kind):
                click.echo(f"{kind}: {name}")
        ctx.exit(1)
    click.echo(f"OK: {result.files} files verified")
    if result.certificate:
        signer = result.certificate
        click.echo(
            f"signed by {signer['subject']} (issued by {signer['issuer']}; certificate sha256 "
            f"{signer['sha256_fingerprint']})"
        )
    record = result.record or {}
    if record:
        verdict = record.get("validation_verdict") or "not validated"
        echo(ctx)(f"signed {record.get('signed_utc')}; validation: {verdict}")
        if record.get("allow_unvalidated") and verdict != "pass":
            click.echo(
                f"warning: signed with --allow-unvalidated (validation: {verdict})", err=True
            )
    # the attestations are signed files, checked against what the signature covers
    if result.attestations is not None:
        for line in result.attestations.lines():
            echo(ctx)(line)
    else:
        echo(ctx)("attestations: none (the bundle predates them; re-export to add them)")


COMMANDS = [keygen_cmd, sign_cmd, verify_cmd]
