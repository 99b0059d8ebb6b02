"""Model inputs: workloads (request-length distributions) and the length families.

Modules: ``_base`` (the abstract :class:`Workload` and the stationary load moments),
``_geometric``, ``_empirical``, ``_benchmark`` (``Fixed``, ``Uniform``), ``_decode`` and
``_prefill`` (the families that ``fit_workload`` fits), ``_fitted`` (a simulatable pair of
families), ``_parse`` (the ``fixed:`` and ``uniform:`` specs).
"""

from ._base import (
    PREFILL_FAMILIES as PREFILL_FAMILIES,
    Workload as Workload,
    independent_load_moments as independent_load_moments,
    show_float as show_float,
    validate_lengths as validate_lengths,
)
from ._benchmark import Fixed as Fixed, Uniform as Uniform
from ._decode import (
    DECODE_CLASSES as DECODE_CLASSES,
    LOGNORMAL_SUM_TERMS as LOGNORMAL_SUM_TERMS,
    MAX_TABLE_TRUNCATION as MAX_TABLE_TRUNCATION,
    SAMPLING_TABLE_STEPS as SAMPLING_TABLE_STEPS,
    DecodeDistribution as DecodeDistribution,
    GeometricDecode as GeometricDecode,
    GeometricMixtureDecode as GeometricMixtureDecode,
    LogNormalDecode as LogNormalDecode,
    NegativeBinomialDecode as NegativeBinomialDecode,
)
from ._empirical import Empirical as Empirical
from ._fitted import FittedWorkload as FittedWorkload
from ._geometric import Geometric as Geometric
from ._parse import (
    FIXED_SPEC as FIXED_SPEC,
    UNIFORM_SPEC as UNIFORM_SPEC,
    parse_fixed_spec as parse_fixed_spec,
    parse_uniform_spec as parse_uniform_spec,
)
from ._prefill import (
    PREFILL_CLASSES as PREFILL_CLASSES,
    ExponentialPrefill as ExponentialPrefill,
    GammaPrefill as GammaPrefill,
    LogNormalPrefill as LogNormalPrefill,
    PrefillDistribution as PrefillDistribution,
    gamma_quantile as gamma_quantile,
)
