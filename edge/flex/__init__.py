"""Flexibility at the edge: metering per ISP, local history, baselines, verification and settlement of
delivered flexibility, availability, prequalification (docs/flex.md).

Sans-IO: the agent drives a FlexEngine with samples, activation windows and a clock, and publishes the records
it returns. The modules are usable on their own (the CLI's `gridedge baselines` uses baselines and accuracy).
"""
from .baselines import METHODS, Baseline, BaselineInput, BaselineResult, make_baseline, register
from .engine import FlexEngine, FlexRecord
from .isp import IspGrid
from .nomination import Nomination, NominationRejected, parse_nomination
from .settings import FlexConfig, ResourceConfig, parse_flex
from .window import ActivationWindow

__all__ = ["METHODS", "Baseline", "BaselineInput", "BaselineResult", "make_baseline", "register", "FlexEngine",
           "FlexRecord", "IspGrid", "Nomination", "NominationRejected", "parse_nomination", "FlexConfig",
           "ResourceConfig", "parse_flex", "ActivationWindow"]
