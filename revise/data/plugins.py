"""Plugin hooks (pluggy). Plugins are found only through the entry-point group ``revise`` and
load only when their entry-point name is on the allow-list.

Allow-list, from first found: ``REVISE_PLUGINS`` (comma-separated names, ``*`` for all found),
else the ``plugins`` list in ``~/.revise/config.yaml`` (``REVISE_CONFIG`` overrides the path),
else none: a third-party plugin never loads just because it is installed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pluggy

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


def allow_list() -> set[str] | None:
    """Names allowed to load; ``None`` means every discovered plugin (``*``)."""
    env = os.environ.get("REVISE_PLUGINS")
    if env is not None:
        names = {n.strip() for n in env.split(",") if n.strip()}
    else:
        config = Path(os.environ.get("REVISE_CONFIG", Path.home() / ".revise" / "config.yaml"))
        names = _config_allow_list(config) if config.exists() else set()
    return None if "*" in names else names


def _config_allow_list(config: Path) -> set[str]:
    """The ``plugins`` list of the config file; anything but a list of names is an error (a
    bare string would otherwise allow each of its letters)."""
    data = _read_config(config)
    if data is None:
        return set()
    if not isinstance(data, dict):
        raise PluginError(
            f"plugin config {config} is a {_yaml_kind(data)}, not a mapping with a 'plugins' list",
            hint=_CONFIG_SHAPE,
        )
    names = data.get("plugins")
    if names is None:
        return set()
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise PluginError(
            f"plugin config {config}: 'plugins' is a {_yaml_kind(names)}, not a list of names",
            hint=_CONFIG_SHAPE,
        )
    return {n.strip() for n in names}


def _read_config(config: Path) -> object:
    import yaml

    try:
        return yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"plugin config {config} is unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PluginError(
            f"plugin config {config}{where} is not valid YAML: {problem}", hint=_CONFIG_SHAPE
        ) from exc


def _yaml_kind(value: object) -> str:
    if isinstance(value, list):
        return "list" if all(isinstance(v, str) for v in value) else "list with non-name entries"
    return {str: "string", dict: "mapping", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


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
