"""Open-loop serving: arrivals, queueing, KV admission, TTFT/TPOT and goodput, capacity.

Modules: ``_arrivals`` (arrival processes and trace timestamps), ``_kernel`` (one bundle's
step loop, the admission policy and the step time), ``_result`` (:class:`ServeResult` and
the pooling of replicas), ``_serve`` (:func:`serve`).
"""

from ._arrivals import Arrivals as Arrivals
from ._arrivals import GammaArrivals as GammaArrivals
from ._arrivals import PoissonArrivals as PoissonArrivals
from ._arrivals import TraceArrivals as TraceArrivals
from ._arrivals import load_arrival_trace as load_arrival_trace
from ._arrivals import read_arrival_times as read_arrival_times
from ._capacity import CapacityResult as CapacityResult
from ._capacity import Plan as Plan
from ._capacity import capacity as capacity
from ._capacity import plan as plan
from ._kernel import POLICIES as POLICIES
from ._plots import plot_serve as plot_serve
from ._result import ServeResult as ServeResult
from ._sensitivity import ServeSensitivity as ServeSensitivity
from ._sensitivity import serve_sensitivity as serve_sensitivity
from ._serve import serve as serve
from ._text import format_capacity as format_capacity
from ._text import format_serve as format_serve
from ._text import serve_dict as serve_dict
