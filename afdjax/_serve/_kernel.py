"""The open-loop kernel: one bundle (ratio ``r``, arrival rate ``X`` per Attention
instance) as a scan over steps, vectorised over ratios x rates (``vmap``) and replicas
(``lax.map`` in batches).

One iteration is one decode step of the bundle:

1. **idle**: a bundle with no request (no occupied slot, empty queue) idles until the
   next arrival (the clock jumps to it);
2. **arrivals**: every request that arrived at or before the step's start ``t`` joins the
   FIFO queue (a ring buffer of ``queue_capacity`` arrival times; while it is full the
   arrival stream pauses, keeping its times, and the run is flagged saturated). At most
   ``max_admissions`` join per step; a later one keeps its arrival time and joins at the
   next step, behind the others (FIFO), so only a step in which it could have been
   admitted is wrong: such a step is flagged and the run repeated with larger buffers.
   Time in the queue is counted from the arrival time either way. A request's lengths
   ``(P, D)`` (functions of its number) are drawn as it joins and kept in the ring;
3. **admission** (:data:`POLICIES`, default ``"balanced"``): in arrival order while a slot
   is free, the head of the queue goes to the instance chosen by the policy among the
   first ``r`` instances that have a free slot and, with a KV capacity ``M`` per instance,
   where its prefill fits (``load_j + P <= M``; no preemption). A head that fits nowhere
   waits and blocks the queue (head-of-line); a request with ``P > M`` could never fit and
   is refused (counted). It joins this step. The default policy admits in bulk: the
   instances with the most free slots (a *level*) take one request each, in the order of
   (KV load, index), while each fits; each then has one slot less, so none is chosen again
   before the whole level has had one: the instances and the order of KV additions of
   one request at a time, in one loop iteration per level (1-7 per step at ``B = 1483``
   instead of one per admission, up to about 95 for ``r = 32``). A level that cannot start
   (a refused head, or one that does not fit its first instance) takes one request.
   At most ``max_admissions`` requests per step: a step that needs more is flagged and
   the run repeated with enough (:func:`afdjax.serve` does it, same random numbers, so the
   same numbers come out);
4. **step**: :func:`step_time` of the occupied loads; every occupied slot emits one token,
   its load grows by one; a request that has done its ``D`` steps leaves at the step's end.

**State: per instance, not per slot.** The step time needs only each instance's occupied
count ``n_j`` and KV load ``T_j`` (the sum of ``P + steps done`` over its requests), and the
policies only those: every step ``T_j += n_j``; an admission adds ``P`` to ``T_j`` and 1 to
``n_j``. A request's length ``D`` is known when it is admitted at step ``s``, so its last
step ``f = s + D - 1`` is known then: a calendar ``(H, r)`` (row ``f % H``) holds the count
and the KV ``P + D`` that leave each instance at the end of step ``f``; each step reads one
row (and clears the previous one). ``H`` (``horizon``) is a power of two above the longest
``D`` of the workload (or 16 mean lengths where unbounded); a run that admits a longer one
is repeated with a longer calendar (same numbers). ``T_j`` is reset to 0 when an instance
empties.

**Per-request figures** without per-slot state: TTFT (queue wait + prefill model) and the
sojourn's wait are known at admission and counted then, with the weight of the request's
last step being measured. TPOT = the busy time between its first step's start and its last
step's end over ``D``: a ring of the busy clock at each step's start (``clock_ring`` steps,
kept as a compensated sum ``hi + lo`` so the difference of two large clocks stays exact to
float rounding of the TPOT itself) and a ring of the admitted requests (admission step, TTFT
target met, ``D``) by request number. Each step resolves up to ``max_resolved`` finished
requests in admission order (TPOT histogram, goodput, sojourn); after the last step a loop
resolves the ones still in the ring, ``max_resolved`` at a time, carrying only the ring's
read position and the sums (it stops when the ring is empty: the bundles' longest need
under ``vmap``). A ring too short for the requests in flight is
flagged and the run repeated with longer rings (same numbers).

Times are kept relative to the start of the current chunk of steps (rebased after each
chunk), so float32 runs do not lose the waits to a large clock.

**Cost** per step and bundle: ``O(r_pad^2 + max_admissions + max_resolved)`` (the arrivals
and their lengths are drawn ``arrival_block`` at a time per loop iteration, none in a step
without arrivals; one admission-loop iteration per level), independent of the batch size
``B`` except through the admissions per step. ``max_admissions`` covers the completions of
a full bundle and the arrivals of a full step at the highest rate (a filling bundle admits
them all at once), with a margin that grows with the run's bundle-steps, so a sweep is not
repeated for one rare step. Memory per bundle: the calendar ``2 H r_pad`` words and the
request ring (``2 x`` the admissions over ``H`` steps). Measured (the 2-core CPU,
``experiments/bench_serve.py``, r = 1..32, three loads, the NumPy reference in the same run;
BENCHMARKS.md has the figures): effective slot-steps per second grow with ``B`` because the
cost per bundle-step grows much more slowly (5, 8 and 23-25 us of CPU at B = 64, 256 and
1483): 4.0e8, 9.4e8 and 1.8e9-2.0e9 by wall time (both cores), 35x, 79x and 69-104x the
reference. At small ``B`` a step of the sweep is a few hundred small XLA operations over
the bundles.

**Gradients.** The kernel is written in differentiable JAX (``tau`` is a max of linear
stage times), but its loops are ``while_loop`` s, which JAX differentiates in forward mode
only (``jax.jvp``/``jacfwd``; it works, reverse mode does not), and the queueing decisions
(an arrival before or after a step's start, a KV fit, which instance, a target met) are
comparisons with zero derivative: a pathwise derivative holds the order of events fixed
and misses the jumps of moving events, which carry much of the derivative wherever
requests wait. Measured (``experiments/serve_sensitivity_steps.py``, the test
configuration ``B = 4``, ``r = 1, 3``, loads 0.2 and 0.7, 32 x 3000 steps), pathwise
against central differences with common random numbers: d mean TPOT / d alpha_a 109, 87,
278, 302 against 126, 97, 451, 620 (10-50 % low), d mean TTFT / d alpha_a 253, 735, 7370,
51200 against 44, 39, 3740, 1710 (2-30 times too high). Differentiable pathwise, and
offered so: the throughput far above capacity (the saturated bundle, exact in expectation:
-1.243, -1.736 against -1.245, -1.737), whose derivative below capacity is 0 (the arrival
rate's). Every other quantity (goodput, TPOT, TTFT, sojourn, queue length) is
differentiated by central differences with common random numbers, which count the jumps:
:func:`afdjax.serve_sensitivity` (``_serve._sensitivity``), no recompilation (the latency
model is a traced argument). An estimator that carries the event crossings in one pass (as
the saturated engine's coupled decode jumps do) is future work.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._random import threefry2x32 as _hash
from .._random import uniform_int
from ._arrivals import TraceArrivals

POLICIES = ("balanced", "least_kv", "round_robin", "random")
"""Admission policies: ``balanced`` (the default: most free slots, ties to the smaller KV
load, then the lower index), ``least_kv`` (smallest KV load, ties to more free slots, then
the lower index), ``round_robin`` (the next instance after the last one used, cyclically,
that can take the request) and ``random`` (uniformly among those that can)."""

_TPOT_SPAN = (1e-3, 1e3)  # TPOT histogram: [c/1e3, 1e3 c] around the full-batch cycle time c
_TTFT_SPAN = (1e-3, 1e7)  # TTFT histogram: [c/1e3, 1e7 c]


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What fixes shapes (static under jit)."""

    max_ratio: int
    batch_size: int
    num_steps: int
    warmup_steps: int
    num_replicas: int
    chunk_steps: int
    num_chunks: int
    queue_capacity: int
    max_admissions: int
    num_bins: int
    policy: str
    replica_batch_size: int
    horizon: int
    """Rows of the completion calendar: the longest decode ``D`` it can hold (a power of two)."""
    request_ring: int
    """Requests admitted and not yet resolved that the request ring holds (a power of two)."""
    max_resolved: int
    """Finished requests resolved per step (more wait to the next step; never changes a number)."""
    arrival_block: int
    """Arrival gaps drawn per iteration of the arrival loop (never changes a number)."""
    clock_ring: int
    """Steps of busy clock kept (a request is resolved within this many steps of its admission)."""


class Inputs(eqx.Module):
    """The traced inputs of a run (scalars unless noted)."""

    kv_capacity: jax.Array
    alpha_p: jax.Array
    beta_p: jax.Array
    slo_ttft: jax.Array
    slo_tpot: jax.Array
    scale: jax.Array
    """Full-batch cycle time at ``r_max`` (centres the histograms)."""


def step_time(latency, kv, n_inst, ratio, mask):
    """The step of the bundle with the loads of its occupied slots (the paper's barrier):
    ``tau = max(max_{j<r} t_A(T_j), t_F, t_C)`` with ``T_j`` instance ``j``'s KV tokens,
    ``t_F = latency.ffn_time(r, n / r)`` and ``t_C = latency.comm_time(r, n / r)`` for the
    ``n`` occupied slots of the bundle (``alpha_f n + beta_f``; a transfer carries the
    mean occupied batch per instance). A full bundle (``n = r B``) gives
    :class:`~afdjax.Barrier`'s step exactly. Returns ``(tau, t_A per instance, t_F, t_C)``;
    ``tau = 0`` when no slot is occupied (no step runs). The one place the step is timed."""
    n = jnp.sum(n_inst).astype(kv.dtype)
    rf = ratio.astype(kv.dtype)
    t_a = jnp.where(mask, latency.attention_time(kv), 0.0)
    t_f = latency.ffn_time(rf, n / rf)
    t_c = latency.comm_time(rf, n / rf)
    tau = jnp.maximum(jnp.maximum(jnp.max(t_a), t_f), t_c)
    busy = n > 0
    return jnp.where(busy, tau, 0.0), t_a, jnp.where(busy, t_f, 0.0), jnp.where(busy, t_c, 0.0)


class Instances(eqx.Module):
    """Per-instance state and the completion calendar (no per-slot state)."""

    n: jax.Array  # (R,) occupied slots
    kv: jax.Array  # (R,) KV tokens of the occupied slots (sum of P + steps done)
    cal: jax.Array  # (H, R, 2) requests that finish at step f (row f % H) and their KV at the end (P + D)


class Requests(eqx.Module):
    """The admitted requests not yet resolved (ring by request number) and the busy-time
    clock (compensated: ``hi + lo``) at the start of each of the last ``clock_ring`` steps."""

    wd: jax.Array  # (Qr, 2) 2 s + (TTFT target met) (s the admission step; -1: refused), and D
    e: jax.Array  # (HE, 2) busy time at the start of step k (hi, lo), row k % HE
    hi: jax.Array  # busy time now
    lo: jax.Array
    rp: jax.Array  # next request number to resolve


class Queue(eqx.Module):
    ring: jax.Array  # (Q, 3) arrival time, P and D (drawn as it arrives) of requests head .. n_arr-1, row n % Q
    head: jax.Array  # next request to admit
    n_arr: jax.Array  # requests arrived so far
    next_arr: jax.Array  # arrival time of request n_arr (relative)
    clock: jax.Array
    last: jax.Array  # round robin: last instance used


class Stats(eqx.Module):
    """Sums over the measured steps of one bundle (scalars unless noted). A request counts
    when its last decode step is a measured one."""

    time: jax.Array
    idle: jax.Array
    tokens: jax.Array
    queue_area: jax.Array
    occupied_area: jax.Array
    kv_area: jax.Array
    arrival_area: jax.Array
    attention_busy: jax.Array
    ffn_busy: jax.Array
    comm_busy: jax.Array
    arrivals: jax.Array
    done: jax.Array
    done_tokens: jax.Array
    good_tokens: jax.Array
    tpot_sum: jax.Array
    ttft_sum: jax.Array
    sojourn_sum: jax.Array
    tpot_hist: jax.Array  # (num_bins + 2,) underflow, bins, overflow
    ttft_hist: jax.Array
    start_in_system: jax.Array
    mid_in_system: jax.Array  # at the middle of the measured window
    end_in_system: jax.Array
    rejected: jax.Array
    cap_hit: jax.Array  # bool
    truncated: jax.Array  # bool: a step needed more than max_admissions (rerun)
    need: jax.Array  # the max_admissions it needed (at least)
    max_decode: jax.Array  # the longest D admitted (a rerun with a longer calendar if > horizon)
    ring_full: jax.Array  # bool: the request ring or the clock ring overflowed (rerun, larger)
    blocked_time: jax.Array  # time of the steps after whose admission a request still waited (bundle full)
    blocked_tokens: jax.Array  # tokens emitted in those steps

    @staticmethod
    def zeros(num_bins, dtype):
        z = jnp.zeros((), dtype)
        i = jnp.zeros((), jnp.int32)
        h = jnp.zeros(num_bins + 2, jnp.int32)
        f = jnp.zeros((), bool)
        return Stats(z, z, z, z, z, z, z, z, z, z, i, i, z, z, z, z, z, h, h, i, i, i, i, f, f, i, i, f, z, z)


def _two_sum(hi, lo, x):
    """``(hi, lo) + x`` with the rounding error of ``hi + x`` kept in ``lo``."""
    s = hi + x
    bb = s - hi
    err = (hi - (s - bb)) + (x - bb)
    return s, lo + err


def _bin(value, log_lo, dlog, num_bins):
    b = jnp.floor((jnp.log(jnp.maximum(value, 1e-300)) - log_lo) / dlog).astype(jnp.int32)
    return jnp.clip(b + 1, 0, num_bins + 1)


def histogram_edges(scale, num_bins: int):
    """``(log_lo, dlog)`` of the TPOT and of the TTFT histograms for the centre ``scale``."""
    lo_t, hi_t = _TPOT_SPAN
    lo_w, hi_w = _TTFT_SPAN
    log_c = jnp.log(scale) if isinstance(scale, jax.Array) else math.log(scale)
    tpot = (log_c + math.log(lo_t), math.log(hi_t / lo_t) / num_bins)
    ttft = (log_c + math.log(lo_w), math.log(hi_w / lo_w) / num_bins)
    return tpot, ttft


def bundle_stats(replica_id, ratio, rate, key_words, workload, arrivals, latency, inp: Inputs, cfg: ServeConfig):
    """Simulate one bundle (replica ``replica_id``, ratio ``ratio``, rate ``rate`` per
    Attention instance); return its :class:`Stats`."""
    R, B, Q, A, L = cfg.max_ratio, cfg.batch_size, cfg.queue_capacity, cfg.max_admissions, cfg.chunk_steps
    H, QR, K, G = cfg.horizon, cfg.request_ring, cfg.max_resolved, cfg.arrival_block
    HE = cfg.clock_ring
    first, stop_step = cfg.warmup_steps, cfg.warmup_steps + cfg.num_steps
    fdtype = jnp.zeros(()).dtype
    k1, k2 = _hash(key_words[0], key_words[1], replica_id, jnp.uint32(0xFFFFFFFF))
    lam = ratio.astype(fdtype) * rate  # the bundle's total arrival rate
    mask = jnp.arange(R) < ratio
    trace = isinstance(arrivals, TraceArrivals)
    if trace:
        ob = _hash(k1, k2, jnp.uint32(0xFFFFFFFF), jnp.uint32(2))
        offset = uniform_int(ob[0], ob[1], arrivals.num_requests)
    (tl, td), (wl, wd) = histogram_edges(inp.scale, cfg.num_bins)
    out_of_range = cfg.num_bins + 2

    def gap(m):
        """Time from request m-1's arrival to request m's."""
        if trace:
            g = arrivals.unit_gap(m - 1, None, offset)
        else:
            g = arrivals.unit_gap(m, _hash(k1, k2, m.astype(jnp.uint32), jnp.uint32(1))[0])
        return g.astype(fdtype) / lam

    def lengths(n):
        if trace and arrivals.has_lengths():
            return arrivals.lengths(offset, n)
        b = _hash(k1, k2, n.astype(jnp.uint32), jnp.uint32(0))
        p, d = workload._fresh(b[0], b[1])
        return p.astype(fdtype), d

    def measured_at(f):
        return (f >= first) & (f < stop_step)

    def pick(elig, free, kv, head, last):
        big = jnp.iinfo(jnp.int32).max
        if cfg.policy == "balanced":
            mf = jnp.max(jnp.where(elig, free, -1))
            c1 = elig & (free == mf)
            c2 = c1 & (kv == jnp.min(jnp.where(c1, kv, jnp.inf)))
        elif cfg.policy == "least_kv":
            c1 = elig & (kv == jnp.min(jnp.where(elig, kv, jnp.inf)))
            c2 = c1 & (free == jnp.max(jnp.where(c1, free, -1)))
        elif cfg.policy == "round_robin":
            order = jnp.mod(jnp.arange(R) - last - 1, ratio)
            c2 = elig & (order == jnp.min(jnp.where(elig, order, big)))
        else:  # random
            rb = _hash(k1, k2, head.astype(jnp.uint32), jnp.arange(R, dtype=jnp.uint32) + 3)[0]
            c2 = elig & (rb == jnp.min(jnp.where(elig, rb, jnp.uint32(0xFFFFFFFF))))
        return jnp.argmax(c2).astype(jnp.int32)

    def resolve(req, st, head, now, final):
        """Resolve the finished requests among the next K in admission order (their TPOT
        needs the busy clock at their last step's end, ``now`` = the step index whose start
        is the latest clock in the ring): the prefix of finished ones. At the end of the run
        (``final``) the unfinished ones are passed over too (they finish after the measured
        window): every admitted request is resolved or passed over."""
        offsets = jnp.arange(K, dtype=jnp.int32)
        m = req.rp + offsets
        pos = jnp.mod(m, QR)
        wd = req.wd[pos]
        word, d = wd[:, 0], wd[:, 1]
        admitted = m < head
        refused = word < 0
        s = word >> 1
        e = s + d  # the step whose start ends the request
        finished = e <= now
        ready = admitted & (refused | finished | final)
        count = jnp.where(jnp.all(ready), K, jnp.argmin(ready))
        res = (offsets < count) & ~refused & finished
        too_old = jnp.any(res & (s <= now - HE))
        end, start = req.e[jnp.mod(e, HE)], req.e[jnp.mod(s, HE)]
        busy = (end[:, 0] - start[:, 0]) + (end[:, 1] - start[:, 1])
        df = jnp.maximum(d, 1).astype(fdtype)
        tpot = busy / df
        w = res & measured_at(e - 1)
        wf = w.astype(fdtype)
        good = ((word & 1) == 1) & (tpot <= inp.slo_tpot)
        tb = _bin(tpot, tl, td, cfg.num_bins)
        st = eqx.tree_at(
            lambda x: (x.good_tokens, x.tpot_sum, x.sojourn_sum, x.tpot_hist, x.ring_full),
            st,
            (
                st.good_tokens + jnp.sum(jnp.where(good, wf * df, 0.0)),
                st.tpot_sum + jnp.sum(wf * tpot),
                st.sojourn_sum + jnp.sum(wf * busy),
                st.tpot_hist.at[jnp.where(w, tb, out_of_range)].add(1, mode="drop"),
                st.ring_full | too_old,
            ),
        )
        return eqx.tree_at(lambda x: x.rp, req, req.rp + count.astype(req.rp.dtype)), st

    def one_step(carry, k):
        inst, req, q, st = carry
        measured = measured_at(k)
        n_occ0 = jnp.sum(inst.n, dtype=jnp.int32)
        # 1. idle until the next arrival
        empty = (n_occ0 == 0) & (q.n_arr == q.head)
        idle = jnp.where(empty, jnp.maximum(q.next_arr - q.clock, 0.0), 0.0)
        clock = q.clock + idle
        in_system = q.n_arr - q.head + n_occ0
        st = eqx.tree_at(
            lambda s: (s.start_in_system, s.mid_in_system),
            st,
            (
                jnp.where(k == first, in_system, st.start_in_system),
                jnp.where(k == first + cfg.num_steps // 2, in_system, st.mid_in_system),
            ),
        )

        # 2. arrivals up to the step's start, at most A per step: a loop drawing G gaps per
        # iteration (none in a step without arrivals); a later one keeps its time and joins
        # at a later step
        zero_i = jnp.zeros((), jnp.int32)
        ii = jnp.arange(A + 1, dtype=jnp.int32)
        gg = jnp.arange(G, dtype=jnp.int32)

        def arrive_cond(c):
            n, _, n_arr, next_arr = c
            return (n < A) & (next_arr <= clock) & (n_arr - q.head < Q)

        def arrive(c):
            n, buf, n_arr, next_arr = c
            # (an associative scan: XLA CPU's cumsum is a slow reduce-window)
            cum = jax.lax.associative_scan(jnp.add, gap(n_arr + 1 + gg))
            times = next_arr + jnp.concatenate([jnp.zeros(1, fdtype), cum])  # requests n_arr .. n_arr + G
            ok = (times[:G] <= clock) & (n + gg < A) & (n_arr - q.head + gg < Q)  # a prefix
            c_new = jnp.sum(ok, dtype=jnp.int32)
            at = jnp.where(ok, n + gg, A)
            p_g, d_g = lengths(n_arr + gg)  # requests n_arr .. n_arr + G - 1
            buf = buf.at[at].set(jnp.stack([times[:G], p_g.astype(fdtype), d_g.astype(fdtype)], axis=-1), mode="drop")
            return n + c_new, buf, n_arr + c_new, times[c_new]

        c0 = (zero_i, jnp.zeros((A, 3), fdtype), q.n_arr, q.next_arr)
        n_new, buf, n_arr, next_arr = jax.lax.while_loop(arrive_cond, arrive, c0)
        arrived = ii[:A] < n_new
        arrival_area = st.arrival_area + jnp.where(measured, jnp.sum(jnp.where(arrived, clock - buf[:, 0], 0.0)), 0.0)
        arrivals_count = st.arrivals + jnp.where(measured, n_new, 0)
        slot_of = jnp.where(arrived, jnp.mod(q.n_arr + ii[:A], Q), Q)
        ring = q.ring.at[slot_of].set(buf, mode="drop")
        pending = next_arr <= clock  # arrived, not yet in the queue (the ring or the buffer was full)
        cap_hit = st.cap_hit | (pending & (n_arr - q.head >= Q))

        # 3. admission, on the instances' counts and KV loads; the lengths of the first A + 1
        # requests in the queue read together before the loop (those past n_arr are not used)
        queued_rows = ring[jnp.mod(q.head + ii, Q)]
        p_all, d_all = queued_rows[:, 1], queued_rows[:, 2]
        never_all = p_all > inp.kv_capacity

        def more(c):
            i, head, free, _, stop, _, _ = c
            return (i < A) & (head < n_arr) & ~stop & jnp.any(mask & (free > 0))

        def one_request(i, free, kv, head, last):
            """Request ``q.head + i`` under the policy: its instance (among those where it
            fits), its ``P``, and whether it is taken, refused (``P > M``) or blocked."""
            p, never = p_all[i], never_all[i]
            elig = mask & (free > 0) & (kv + p <= inp.kv_capacity)
            fits = jnp.any(elig)
            return pick(elig, free, kv, head, last), p, ~never & fits, never, ~never & ~fits

        def admit(c):
            # only small state in the loop (a batched while loop copies its whole carry per
            # iteration): the instances chosen go to a buffer of A, applied after it. Every
            # iteration but a blocked last one takes or refuses request q.head + i.
            i, head, free, kv, stop, last, jbuf = c
            j, p, take, never, blocked = one_request(i, free, kv, head, last)
            jbuf = jbuf.at[i].set(j)
            free = free.at[j].add(-take.astype(free.dtype))
            kv = kv.at[j].add(jnp.where(take, p, 0.0))
            head = head + (take | never).astype(head.dtype)
            return i + 1, head, free, kv, stop | blocked, jnp.where(take, j, last), jbuf

        def admit_level(c):
            # the balanced policy in bulk: the instances with the most free slots (the
            # level) take one request each, in the order of (KV load, index), while the
            # request fits where it goes. Each of them then has one slot less, so none is
            # chosen twice before the whole level has had one: the same instances, the same
            # order of KV additions as one request per iteration. A level that cannot start
            # (the head is refused or does not fit its first instance) takes one request as
            # ``admit`` does (the same choice), in the same updates.
            i, head, free, kv, stop, last, jbuf = c
            open_ = mask & (free > 0)
            top = open_ & (free == jnp.max(jnp.where(open_, free, -1)))
            before = top[None, :] & (
                (kv[None, :] < kv[:, None]) | ((kv[None, :] == kv[:, None]) & (lane[None, :] < lane[:, None]))
            )
            rank = jnp.sum(before, axis=1, dtype=jnp.int32)  # the request i + rank goes to this instance
            avail = jnp.minimum(n_arr - head, A - i)
            p, never = p_all[jnp.minimum(i + rank, A)], never_all[jnp.minimum(i + rank, A)]
            blocked = top & (rank < avail) & (never | (kv + p > inp.kv_capacity))
            count = jnp.minimum(jnp.min(jnp.where(blocked, rank, R)), jnp.minimum(avail, jnp.sum(top, dtype=jnp.int32)))
            bulk = count > 0
            # the one request of admit
            j1, p0, take1, never0, blocked1 = one_request(i, free, kv, head, last)
            one = (lane == j1) & take1
            take = jnp.where(bulk, top & (rank < count), one)
            at = jnp.where(bulk, jnp.where(take, i + rank, A), jnp.where(lane == j1, i, A))
            jbuf = jbuf.at[at].set(lane, mode="drop")
            j_last = jnp.argmax(jnp.where(bulk, take & (rank == count - 1), one)).astype(jnp.int32)
            return (
                i + jnp.where(bulk, count, 1),
                head + jnp.where(bulk, count, take1 | never0),
                free - take.astype(free.dtype),
                kv + jnp.where(take, jnp.where(bulk, p, p0), 0.0),
                stop | (~bulk & blocked1),
                jnp.where(jnp.any(take), j_last, last),
                jbuf,
            )

        lane = jnp.arange(R, dtype=jnp.int32)
        c0 = (zero_i, q.head, B - inst.n, inst.kv, jnp.zeros((), bool), q.last, jnp.zeros(A, jnp.int32))
        body = admit_level if cfg.policy == "balanced" else admit
        i, head, free, kv, stop, last, j_new = jax.lax.while_loop(more, body, c0)
        rows = ii[:A]
        used = rows < head - q.head  # taken or refused: request q.head + row
        took = used & ~never_all[:A]
        refused_now = used & never_all[:A]
        rejected = st.rejected + jnp.where(measured, jnp.sum(refused_now, dtype=jnp.int32), 0)
        d_new, p_new = d_all[:A].astype(jnp.int32), p_all[:A]
        wait_new = clock - queued_rows[:A, 0]
        f_new = k + d_new - 1  # the request's last step
        row_of = jnp.where(took, jnp.mod(f_new, H), H)
        # the previous step's row was read at its end: cleared now, before any write
        # (write, then read: the calendar stays in place, no copy per step)
        prev = jnp.mod(k - 1, H)
        leave = jnp.stack([jnp.ones_like(p_new), p_new + d_new.astype(fdtype)], axis=-1)
        cal = inst.cal.at[prev].set(0.0).at[row_of, j_new].add(leave, mode="drop")
        ttft = wait_new + inp.alpha_p * p_new + inp.beta_p
        ok = ttft <= inp.slo_ttft
        pos = jnp.where(used, jnp.mod(q.head + rows, QR), QR)
        word_new = jnp.where(took, 2 * k + ok, -1).astype(jnp.int32)
        req = eqx.tree_at(lambda x: x.wd, req, req.wd.at[pos].set(jnp.stack([word_new, d_new], axis=-1), mode="drop"))
        wa = took & measured_at(f_new)  # requests counted at admission (all they need is known)
        waf = wa.astype(fdtype)
        wb = _bin(ttft, wl, wd, cfg.num_bins)
        p_next, never = p_all[head - q.head], never_all[head - q.head]
        cand = head < n_arr
        elig = mask & (free > 0) & (kv + p_next <= inp.kv_capacity)
        slot_free = jnp.any(mask & (free > 0))
        cut_admissions = (i >= A) & cand & ~stop & slot_free & (never | jnp.any(elig))
        cut_arrivals = pending & (n_new >= A) & (head == n_arr) & slot_free
        truncated = st.truncated | cut_admissions | cut_arrivals
        free_total = jnp.sum(jnp.where(mask, free, 0), dtype=jnp.int32)
        need = jnp.maximum(
            st.need,
            jnp.maximum(
                jnp.where(cut_admissions, i + jnp.minimum(n_arr - head, free_total), 0),
                jnp.where(cut_arrivals, 2 * A, 0),
            ),
        )

        # 4. the step
        n_inst = B - free
        tau, t_a, t_f, t_c = step_time(latency, kv, n_inst, ratio, mask)
        n = jnp.sum(n_inst, dtype=jnp.int32)
        queued = n_arr - head
        w = jnp.where(measured, 1.0, 0.0)
        # every occupied slot emits a token; the requests whose last step this is leave
        row = jnp.mod(k, H)
        gone = cal[row]
        gone_n, gone_kv = gone[:, 0].astype(jnp.int32), gone[:, 1]
        n_after = n_inst - gone_n
        kv_after = jnp.where(n_after > 0, kv + n_inst.astype(fdtype) - gone_kv, 0.0)
        inst = Instances(n_after, kv_after, cal)
        hi, lo = _two_sum(req.hi, req.lo, tau)
        e_at = jnp.mod(k + 1, HE)
        req = eqx.tree_at(lambda x: (x.e, x.hi, x.lo), req, (req.e.at[e_at].set(jnp.stack([hi, lo])), hi, lo))
        rf = ratio.astype(fdtype)
        st = Stats(
            time=st.time + w * (idle + tau),
            idle=st.idle + w * idle,
            tokens=st.tokens + w * n,
            queue_area=st.queue_area + w * queued * tau,
            occupied_area=st.occupied_area + w * n * tau,
            kv_area=st.kv_area + w * jnp.sum(kv) / rf * tau,
            arrival_area=arrival_area,
            attention_busy=st.attention_busy + w * jnp.sum(t_a) / rf,
            ffn_busy=st.ffn_busy + w * t_f,
            comm_busy=st.comm_busy + w * t_c,
            arrivals=arrivals_count,
            done=st.done + jnp.sum(wa, dtype=jnp.int32),
            done_tokens=st.done_tokens + jnp.sum(waf * d_new.astype(fdtype)),
            good_tokens=st.good_tokens,
            tpot_sum=st.tpot_sum,
            ttft_sum=st.ttft_sum + jnp.sum(waf * ttft),
            sojourn_sum=st.sojourn_sum + jnp.sum(waf * wait_new),
            tpot_hist=st.tpot_hist,
            ttft_hist=st.ttft_hist.at[jnp.where(wa, wb, out_of_range)].add(1, mode="drop"),
            start_in_system=st.start_in_system,
            mid_in_system=st.mid_in_system,
            end_in_system=jnp.where(
                k == stop_step - 1, queued + n - jnp.sum(gone_n, dtype=jnp.int32), st.end_in_system
            ),
            rejected=rejected,
            cap_hit=cap_hit,
            truncated=truncated,
            need=need,
            max_decode=jnp.maximum(st.max_decode, jnp.max(jnp.where(took, d_new, 0))),
            ring_full=st.ring_full | (head - req.rp > QR),
            blocked_time=st.blocked_time + jnp.where(queued > 0, w * tau, 0.0),
            blocked_tokens=st.blocked_tokens + jnp.where(queued > 0, w * n, 0.0),
        )
        # 5. resolve the TPOT of up to K finished requests, in admission order (at the
        # run's last step the unfinished ones are passed over too; the rest after the scan)
        req, st = resolve(req, st, head, k + 1, k == cfg.num_chunks * L - 1)
        q = Queue(ring, head, n_arr, next_arr, clock + tau, last)
        return (inst, req, q, st), None

    def chunk(carry, c):
        carry, _ = jax.lax.scan(one_step, carry, c * L + jnp.arange(L))
        inst, req, q, st = carry
        shift = q.clock  # rebase every time on the chunk's end
        ring = q.ring.at[:, 0].add(-shift)
        q = Queue(ring, q.head, q.n_arr, q.next_arr - shift, jnp.zeros_like(q.clock), q.last)
        return (inst, req, q, st), None

    zero_i = jnp.zeros((), jnp.int32)
    zero_f = jnp.zeros((), fdtype)
    inst0 = Instances(jnp.zeros(R, jnp.int32), jnp.zeros(R, fdtype), jnp.zeros((H, R, 2), fdtype))
    req0 = Requests(jnp.zeros((QR, 2), jnp.int32), jnp.zeros((HE, 2), fdtype), zero_f, zero_f, zero_i)
    q0 = Queue(jnp.zeros((Q, 3), fdtype), zero_i, zero_i, gap(zero_i), zero_f, jnp.asarray(-1, jnp.int32))
    carry0 = (inst0, req0, q0, Stats.zeros(cfg.num_bins, fdtype))
    (_, req, q, st), _ = jax.lax.scan(chunk, carry0, jnp.arange(cfg.num_chunks))

    # the end of the run: the requests still in the ring, K at a time, as the last step
    # would go on. The loop carries only the ring's read position and the sums (under vmap
    # its trip count is the bundles' largest, and a finished bundle's carry is kept by a
    # select: the rings, only read, stay out of the carry).
    def finish(c):
        rp, st = c
        r2, st = resolve(eqx.tree_at(lambda x: x.rp, req, rp), st, q.head, cfg.num_chunks * L, True)
        return r2.rp, st

    _, st = jax.lax.while_loop(lambda c: c[0] < q.head, finish, (req.rp, st))
    return st


def replica_block(key_words, workload, arrivals, latency, inp, cfg: ServeConfig, ratios, rates, replica_ids):
    """Stacked :class:`Stats` ``(replicas, ratios, rates)`` of the replicas ``replica_ids``
    (one ``vmap`` over the ratio-rate pairs inside, the replicas in batches)."""
    nr, nx = ratios.shape[0], rates.shape[0]
    pair_r = jnp.repeat(ratios, nx)
    pair_x = jnp.tile(rates, nr)

    def one_replica(i):
        st = jax.vmap(lambda r, x: bundle_stats(i, r, x, key_words, workload, arrivals, latency, inp, cfg))(
            pair_r, pair_x
        )
        return jax.tree_util.tree_map(lambda a: a.reshape((nr, nx, *a.shape[1:])), st)

    return jax.lax.map(one_replica, replica_ids, batch_size=min(cfg.replica_batch_size, replica_ids.shape[0]))
