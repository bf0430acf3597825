"""The API of site-loader plugins, for their authors: ``hookimpl`` marks a plugin's
``revise_site_loaders`` hook, which returns :class:`SiteLoader` objects; ``plugin_infos()`` says
what was found, allowed and loaded. Plugins are found only through the entry-point group
``revise`` and load only when on the allow-list (see :mod:`revise.data.plugins`, where the
machinery lives, and plugins/revise-pngfolder for a worked plugin)."""

from revise.data.loaders import SiteLoader
from revise.data.plugins import GROUP, PluginInfo, hookimpl, plugin_infos

__all__ = ["GROUP", "PluginInfo", "SiteLoader", "hookimpl", "plugin_infos"]
