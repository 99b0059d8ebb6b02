"""Event-driven NumPy reference of the micro-batch pipeline (a test oracle).

A discrete-event simulator written for the tests and sharing no code with
``afdjax._step._pipeline``: a priority queue of timed events, and resources (every Attention
instance, the A->F link, the FFN, the F->A link) that each serve one micro-batch at a
time, choosing among the waiting micro-batches the one first in the order (step, group).
Jobs move on when an event fires: a micro-batch asks for attention on all its
instances when its previous layer's F->A transfer is done, for the A->F link when its
last attention is done, and so on.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["simulate_pipeline_events"]

ATTN, A2F, FFN, F2A = "attention", "a2f", "ffn", "f2a"


class _Resource:
    def __init__(self):
        self.busy = False
        self.waiting: list = []  # heap of (step, group)

    def request(self, job):
        heapq.heappush(self.waiting, job)


def simulate_pipeline_events(attention_time, comm_time, ffn_time, num_active=None):
    """Run the pipeline with stage times ``attention_time (K, J, m)``, ``comm_time (K, m)``,
    ``ffn_time (K, m)``; only instances ``j < num_active`` take part (default all).

    Returns a dict of start/end arrays: ``attention_start/_end (K, J, m)`` (NaN for
    inactive instances), ``a2f_start/_end``, ``ffn_start/_end``, ``f2a_start/_end`` ``(K, m)``.
    """
    attention_time = np.asarray(attention_time, dtype=np.float64)
    K, J, m = attention_time.shape
    comm_time = np.broadcast_to(np.asarray(comm_time, np.float64), (K, m))
    ffn_time = np.broadcast_to(np.asarray(ffn_time, np.float64), (K, m))
    r = J if num_active is None else int(num_active)
    out = {
        f"{stage}_{edge}": np.full((K, J, m) if stage == ATTN else (K, m), np.nan)
        for stage in (ATTN, A2F, FFN, F2A)
        for edge in ("start", "end")
    }
    resources = {(ATTN, j): _Resource() for j in range(r)}
    resources.update({(A2F, 0): _Resource(), (FFN, 0): _Resource(), (F2A, 0): _Resource()})
    duration = {A2F: comm_time, FFN: ffn_time, F2A: comm_time}
    remaining_attention = {}  # (k, g) -> attentions still to finish
    events: list = []  # heap of (time, sequence, resource key, job)
    sequence = 0
    now = 0.0

    def dispatch():
        nonlocal sequence
        for key, res in resources.items():
            if res.busy or not res.waiting:
                continue
            k, g = heapq.heappop(res.waiting)
            stage, j = key
            if stage == ATTN:
                t = attention_time[k, j, g]
                out["attention_start"][k, j, g] = now
            else:
                t = duration[stage][k, g]
                out[f"{stage}_start"][k, g] = now
            res.busy = True
            heapq.heappush(events, (now + t, sequence, key, (k, g)))
            sequence += 1

    def arrive_attention(k, g):
        if k >= K:
            return
        remaining_attention[(k, g)] = r
        for j in range(r):
            resources[(ATTN, j)].request((k, g))

    for g in range(m):
        arrive_attention(0, g)
    dispatch()
    while events:
        now = events[0][0]
        while events and events[0][0] == now:  # all completions at this instant
            _, _, key, (k, g) = heapq.heappop(events)
            stage, j = key
            resources[key].busy = False
            if stage == ATTN:
                out["attention_end"][k, j, g] = now
                remaining_attention[(k, g)] -= 1
                if remaining_attention[(k, g)] == 0:
                    resources[(A2F, 0)].request((k, g))
            else:
                out[f"{stage}_end"][k, g] = now
                if stage == A2F:
                    resources[(FFN, 0)].request((k, g))
                elif stage == FFN:
                    resources[(F2A, 0)].request((k, g))
                else:
                    arrive_attention(k + 1, g)
        dispatch()
    return out
