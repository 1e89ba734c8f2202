"""Flexibility at the edge: metering per ISP, local history, baselines, verification and settlement of
delivered flexibility, availability, prequalification (docs/flex.md).

Sans-IO: the agent drives a FlexEngine with samples, activation windows and a clock, and publishes the records
it returns. The modules are usable on their own (the CLI's `gridedge baselines` uses baselines and accuracy).
"""
import importlib

#: public name -> the module that defines it; loaded on first use, so that importing gridedge.flex (the agent
#: and the config validator do) costs nothing on a gateway without flexibility resources: no numpy.
_EXPORTS = {
    "METHODS": "baselines", "Baseline": "baselines", "BaselineInput": "baselines", "BaselineResult": "baselines",
    "make_baseline": "baselines", "register": "baselines", "FlexEngine": "engine", "FlexRecord": "engine",
    "IspGrid": "isp", "Nomination": "nomination", "NominationRejected": "nomination",
    "parse_nomination": "nomination", "FlexConfig": "settings", "ResourceConfig": "settings",
    "parse_flex": "settings", "ActivationWindow": "window",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
