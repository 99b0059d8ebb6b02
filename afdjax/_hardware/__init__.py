"""Hardware numerics: accelerator and model specs with their presets, the roofline
derivation of latency coefficients, the [`Deployment`][afdjax.Deployment] record, and hardware TOML
writing. Imports neither ``afdjax._data`` nor ``afdjax._specs`` (the string and file
grammar that builds these objects from user input)."""

from ._deployment import Deployment as Deployment
from ._derive import ATTENTION_HBM_WEIGHT_FRACTION as ATTENTION_HBM_WEIGHT_FRACTION
from ._derive import DEFAULT_COMPUTE_EFFICIENCY as DEFAULT_COMPUTE_EFFICIENCY
from ._derive import DEFAULT_KERNEL_OVERHEAD_US as DEFAULT_KERNEL_OVERHEAD_US
from ._derive import DEFAULT_MEMORY_EFFICIENCY as DEFAULT_MEMORY_EFFICIENCY
from ._derive import DEFAULT_NETWORK_EFFICIENCY as DEFAULT_NETWORK_EFFICIENCY
from ._derive import FFN_HBM_WEIGHT_FRACTION as FFN_HBM_WEIGHT_FRACTION
from ._derive import CoefficientDerivation as CoefficientDerivation
from ._derive import HardwareDerivation as HardwareDerivation
from ._derive import derive_latency as derive_latency
from ._devices import ACCELERATORS as ACCELERATORS
from ._devices import ATTENTION_KINDS as ATTENTION_KINDS
from ._devices import DTYPE_BYTES as DTYPE_BYTES
from ._devices import DTYPES as DTYPES
from ._devices import LATENCY_PRESET_MODELS as LATENCY_PRESET_MODELS
from ._devices import MODELS as MODELS
from ._devices import TIME_UNIT as TIME_UNIT
from ._devices import Accelerator as Accelerator
from ._devices import ModelSpec as ModelSpec
from ._text import format_derivation as format_derivation
from ._text import format_presets as format_presets
from ._toml import ACCELERATOR_TABLE_KEYS as ACCELERATOR_TABLE_KEYS
from ._toml import DEPLOYMENT_TABLE_KEYS as DEPLOYMENT_TABLE_KEYS
from ._toml import LATENCY_TABLE_KEYS as LATENCY_TABLE_KEYS
from ._toml import MODEL_TABLE_KEYS as MODEL_TABLE_KEYS
from ._toml import STAGE_TABLES as STAGE_TABLES
from ._toml import deployment_to_toml as deployment_to_toml
from ._toml import latency_to_toml as latency_to_toml
from ._toml import toml_value as toml_value
