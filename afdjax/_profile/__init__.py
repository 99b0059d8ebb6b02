"""Latency coefficients from measurement: [`profile_hardware`][afdjax.profile_hardware] times real JAX decode layers on
the default device and fits the six coefficients."""

from ._layers import scale_model as scale_model
from ._profile import profile_hardware as profile_hardware
from ._result import ProfileResult as ProfileResult
