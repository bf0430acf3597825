"""Plugin hooks (pluggy). Plugins are found only through the entry-point group ``revise`` and
load only when their entry-point name is on the allow-list.

Allow-list, from first found: ``REVISE_PLUGINS`` (comma-separated names, ``*`` for all found),
else the ``plugins`` list in ``~/.revise/config.yaml`` (``REVISE_CONFIG`` overrides the path),
else none: a third-party plugin never loads just because it is installed. The config is a
:class:`PluginConfig`; a file that is not one is refused with every problem and its location.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Annotated

import pluggy
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, ValidationError

from revise._schema import Hint, problems, refusal
from revise.data.loaders import SiteLoader
from revise.errors import PluginError, UnknownNameError

log = logging.getLogger(__name__)

GROUP = "revise"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class HookSpecs:
    @hookspec
    def revise_site_loaders(self) -> list[SiteLoader]:
        """Return the site loaders this plugin provides."""


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin" or "<distribution> <version> (<entry point value>)"
    allowed: bool
    loaded: bool
    error: str = ""


_CONFIG_SHAPE = "e.g. `plugins: [pngfolder]`, or `plugins:` then one `- name` line per plugin"

_Name = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=1)]


class PluginConfig(BaseModel):
    """What revise reads of its config file (``~/.revise/config.yaml``); any other key is left
    alone. ``REVISE_PLUGINS`` gives the same allow-list as comma-separated names."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # a list, never a bare string, which would otherwise allow each of its letters
    plugins: Annotated[list[_Name] | None, Hint(_CONFIG_SHAPE)] = Field(
        None, description="the entry-point names of the plugins allowed to load; * for all found"
    )

    def allowed(self) -> set[str] | None:
        """Names allowed to load; ``None`` means every discovered plugin (``*``)."""
        names = set(self.plugins or ())
        return None if "*" in names else names


def allow_list() -> set[str] | None:
    """Names allowed to load; ``None`` means every discovered plugin (``*``)."""
    env = os.environ.get("REVISE_PLUGINS")
    if env is not None:
        return PluginConfig(plugins=[n for n in env.split(",") if n.strip()]).allowed()
    config = Path(os.environ.get("REVISE_CONFIG", Path.home() / ".revise" / "config.yaml"))
    return (_read_config(config) if config.exists() else PluginConfig()).allowed()


def _read_config(config: Path) -> PluginConfig:
    """The config file as :class:`PluginConfig` (empty: nothing allowed); a file that is not
    one is a PluginError naming every problem and where it is (``plugins[1]``)."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"plugin config {config} is unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PluginError(
            f"plugin config {config}{where} is not valid YAML: {problem}", hint=_CONFIG_SHAPE
        ) from exc
    try:
        return PluginConfig.model_validate({} if data is None else data)
    except ValidationError as exc:
        found = [  # each said with what the file should look like
            p if p.hint else replace(p, hint=_CONFIG_SHAPE)
            for p in problems(exc, PluginConfig, unknown="key")
        ]
        message, hint = refusal(f"plugin config {config}", found)
        raise PluginError(message, hint=hint) from None


class _Plugins:
    def __init__(self) -> None:
        self.manager: pluggy.PluginManager | None = None
        self.infos: list[PluginInfo] = []

    def load(self) -> pluggy.PluginManager:
        if self.manager is not None:
            return self.manager
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(HookSpecs)
        from revise.data import dicom_loader, idx_loader

        infos: list[PluginInfo] = []
        for builtin in (dicom_loader, idx_loader):
            pm.register(builtin, name=builtin.NAME)
            infos.append(PluginInfo(builtin.NAME, "builtin", True, True))
        allowed = allow_list()
        for ep in metadata.entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            source = f"{dist.name if dist else '?'} {dist.version if dist else ''} ({ep.value})"
            ok = allowed is None or ep.name in allowed
            info = PluginInfo(ep.name, source, ok, False)
            infos.append(info)
            if not ok:
                log.info("plugin %s found but not on the allow-list; not loaded", ep.name)
                continue
            try:
                pm.register(ep.load(), name=ep.name)
                info.loaded = True
            except Exception as exc:  # a broken plugin must not take the tool down
                info.error = f"{type(exc).__name__}: {exc}"
                log.warning("plugin %s failed to load: %s", ep.name, info.error)
        self.manager, self.infos = pm, infos
        return pm

    def reset(self) -> None:
        self.manager, self.infos = None, []


_PLUGINS = _Plugins()


def plugin_infos() -> list[PluginInfo]:
    _PLUGINS.load()
    return list(_PLUGINS.infos)


def site_loaders() -> dict[str, SiteLoader]:
    loaders: dict[str, SiteLoader] = {}
    for batch in _PLUGINS.load().hook.revise_site_loaders():
        for loader in batch:
            if loader.name in loaders:
                raise PluginError(f"two plugins provide a site loader named {loader.name!r}")
            loaders[loader.name] = loader
    return loaders


def get_loader(name: str) -> SiteLoader:
    loaders = site_loaders()
    if name not in loaders:
        raise UnknownNameError(
            f"unknown site loader {name!r}; loaded: {', '.join(sorted(loaders))}",
            hint="install the plugin and add it to the allow-list (REVISE_PLUGINS)",
        )
    return loaders[name]


def reset() -> None:
    """Forget loaded plugins (tests change the allow-list between cases)."""
    _PLUGINS.reset()
