"""Privacy attacks that read recorded runs: one registry of attack plugins (`ATTACKS`, `make_attack`), the FKGE
triple-inference attacks (SIA, CIP, CIA) and FedR's reconstruction, membership games, metrics and the audit.

Third-party attacks register through the entry-point group ``fedsim.attacks`` (name = attack name, object = an
`attacks.base.Attack` subclass); they are loaded on the first lookup."""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

from fedsim.registry import Registry

ENTRY_POINT_GROUP = "fedsim.attacks"

ATTACKS: Registry = Registry("attack")
_plugins_loaded = False


def _register_builtins() -> None:
    from attacks.cia import ClientActiveInference
    from attacks.cip import ClientPassiveInference, ClientPassiveInferenceCode
    from attacks.fedr import Reconstruction
    from attacks.opboost_reconstruct import OpBoostReconstruction
    from attacks.sia import ServerInference

    for cls in (ServerInference, ClientPassiveInference, ClientPassiveInferenceCode, ClientActiveInference,
                Reconstruction, OpBoostReconstruction):
        ATTACKS.add(cls.name, cls, cls.__doc__ or "")


def load_plugins() -> list[str]:
    """Register the attacks of installed packages' ``fedsim.attacks`` entry points; returns their names."""
    global _plugins_loaded
    from attacks.base import Attack

    loaded = []
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
                if not (isinstance(cls, type) and issubclass(cls, Attack)):
                    raise TypeError(f"{ep.value} is not an attacks.base.Attack subclass")
                ATTACKS.add(ep.name, cls)
                loaded.append(ep.name)
            except Exception as err:  # a broken plugin must not hide the built-in attacks
                warnings.warn(f"attack plugin {ep.name!r} ({ep.value}) not loaded: {err}", stacklevel=2)
    return loaded


def make_attack(name_or_class: Any, **params: Any):
    """An attack instance by registered name (or class) with its parameters."""
    load_plugins()
    return ATTACKS.make(name_or_class, **params)


_register_builtins()
