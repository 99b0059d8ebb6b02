"""AFD against co-located serving on the same devices (issue 15): [`compare`][afdjax.compare]
(numerics in ``_search``, the report text in ``_text``, the plot in ``_plots``)."""

from ._search import Comparison as Comparison
from ._search import compare as compare
