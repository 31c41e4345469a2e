"""Which ClientApp and ServerApp modules run a protocol (each module exposes ``app``; servers ``make_server_app``)."""

from __future__ import annotations

import importlib
from types import ModuleType

APP_MODULES: dict[str, tuple[str, str]] = {
    "fkge": ("clients.fkge_app", "servers.fkge_app"),
    "opboost": ("clients.opboost_app", "servers.opboost_app"),
}


def app_modules(protocol: str) -> tuple[str, str]:
    """(client module, server module) names of ``protocol``."""
    try:
        return APP_MODULES[protocol]
    except KeyError:
        raise ValueError(f"no apps for protocol {protocol!r}; known: {', '.join(APP_MODULES)}") from None


def load_apps(protocol: str) -> tuple[ModuleType, ModuleType]:
    """The imported (client, server) app modules of ``protocol``."""
    client, server = app_modules(protocol)
    return importlib.import_module(client), importlib.import_module(server)
