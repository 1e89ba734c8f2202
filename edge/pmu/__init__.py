"""PMUs at the edge: C37.118.2 streams decoded in full, decimated for telemetry, checked for events at full rate."""
from .device import PmuDevice, make_decoder
from .events import EventSettings

__all__ = ["PmuDevice", "EventSettings", "make_decoder"]
