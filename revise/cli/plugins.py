"""`revise plugins` and `revise methods`: what is installed and what can be used."""

from __future__ import annotations

import click


@click.command("plugins")
def plugins_cmd() -> None:
    """List site-loader plugins: loaded, or found but not on the allow-list."""
    from revise.data.plugins import plugin_infos, site_loaders

    for info in plugin_infos():
        state = (
            "loaded"
            if info.loaded
            else ("failed: " + info.error if info.error else "not allowed (add to REVISE_PLUGINS)")
        )
        click.echo(f"{info.name:<16} {state:<12} {info.source}")
    click.echo("site loaders: " + ", ".join(sorted(site_loaders())))


@click.command("methods")
def methods_cmd() -> None:
    """List the unlearning methods with a one-line summary."""
    from revise.unlearn import api  # noqa: F401  (registers the built-in methods)
    from revise.unlearn.base import METHODS

    click.echo(f"{'auto':<18} the automatic revision: no settings, no reference (chooses below)")
    for name in METHODS:
        click.echo(f"{name:<18} {METHODS.summary(name)}")


COMMANDS = [plugins_cmd, methods_cmd]
