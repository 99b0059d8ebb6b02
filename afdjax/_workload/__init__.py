"""Model inputs: workloads (request-length distributions) and the length families.

Modules: ``_base`` (the abstract [`Workload`][afdjax.Workload] and the stationary load moments),
``_geometric``, ``_empirical``, ``_benchmark`` (``Fixed``, ``Uniform``), ``_decode`` and
``_prefill`` (the families that ``fit_workload`` fits), ``_fitted`` (a simulatable pair of
families). Their spec strings (``fixed:``, ``uniform:``, ``fitted:``) are parsed in
``afdjax._specs``, with every other user-facing grammar.
"""

from ._base import (
    PREFILL_FAMILIES as PREFILL_FAMILIES,
)
from ._base import (
    Workload as Workload,
)
from ._base import (
    independent_load_moments as independent_load_moments,
)
from ._base import (
    show_float as show_float,
)
from ._base import (
    validate_lengths as validate_lengths,
)
from ._benchmark import Fixed as Fixed
from ._benchmark import Uniform as Uniform
from ._decode import (
    DECODE_CLASSES as DECODE_CLASSES,
)
from ._decode import (
    LOGNORMAL_SUM_TERMS as LOGNORMAL_SUM_TERMS,
)
from ._decode import (
    MAX_TABLE_TRUNCATION as MAX_TABLE_TRUNCATION,
)
from ._decode import (
    SAMPLING_TABLE_STEPS as SAMPLING_TABLE_STEPS,
)
from ._decode import (
    DecodeDistribution as DecodeDistribution,
)
from ._decode import (
    GeometricDecode as GeometricDecode,
)
from ._decode import (
    GeometricMixtureDecode as GeometricMixtureDecode,
)
from ._decode import (
    LogNormalDecode as LogNormalDecode,
)
from ._decode import (
    NegativeBinomialDecode as NegativeBinomialDecode,
)
from ._empirical import Empirical as Empirical
from ._fitted import FittedWorkload as FittedWorkload
from ._geometric import Geometric as Geometric
from ._prefill import (
    PREFILL_CLASSES as PREFILL_CLASSES,
)
from ._prefill import (
    ExponentialPrefill as ExponentialPrefill,
)
from ._prefill import (
    GammaPrefill as GammaPrefill,
)
from ._prefill import (
    LogNormalPrefill as LogNormalPrefill,
)
from ._prefill import (
    PrefillDistribution as PrefillDistribution,
)
from ._prefill import (
    gamma_quantile as gamma_quantile,
)
