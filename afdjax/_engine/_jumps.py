"""Stage 5 (gradients only), coupled decode-length jumps: the smoothed-perturbation-analysis
term of ``d E[time] / d theta`` for decode-length parameters ``theta``.

Every decode length is an inverse-CDF draw ``D = min{d : F_theta(d) >= U}``; as ``theta``
grows, ``D_i`` jumps to ``D_i + 1`` at rate ``w_i = -dF_theta(D_i)/dtheta / p_theta(D_i)``
(summation by parts makes this one-sided form exact in expectation for either sign), so

    d E[time] / d theta = E[ sum_i w_i (time(path with D_i + 1) - time(path)) ].

The alternative path of request ``i`` (slot ``s`` of instance ``j``) differs from the
primal one only in that slot: one extra step of load ``P_i + D_i`` at the step ``e_i``
where its successor started, and after it the slot's sawtooth shifted by one step: load
``-1`` on every later step except at the slot's later request boundaries ``b``, where it
is ``delta_b = P_old + D_old - 1 - P_new``. The stationary first request of a slot also
has an *age* jump (load ``+1`` while it lasts, no shift). So with cumulative weights

    Omega_j(t) = sum of w_i over requests of instance j that ended before t,

the sum over all requests is a few scatter-adds and cumulative sums per chunk, like the
loads themselves (no suffix sums: everything is known when a step is computed):

    sum_i w_i Delta_i = sum_t sum_j Omega_j(t) e_j(t, -1) + sum_t sum_j A_j(t) e_j(t, +1)
                        + sum_b [W_b (e(b, delta_b) - e(b, -1)) + w_own e(b, delta_b + 1)],

where ``e_j(t, delta)`` is the change of step ``t``'s time when instance ``j``'s load
changes by ``delta``.

**Down jumps** (two-sided families, ``Workload._has_down_jumps``: the
``decode_scale`` of [`Empirical`][afdjax.Empirical]): a request may also carry a signed weight
``v_i`` on the path with ``D_i - 1``. That path's slot ends one step earlier, so its later
sawtooth moves one step *earlier*: load ``+1`` from the request's end ``e_i`` on, except
at the step ``b - 1`` before each later boundary ``b``, where it is ``-delta_b``, and
``-delta_{e_i}`` at ``e_i - 1`` for its own. With ``Psi_j(t)`` the sum of ``v_i`` of the
requests that ended at or before ``t``:

    sum_i v_i Delta_i^- = sum_t sum_j Psi_j(t) e_j(t, +1)
                          + sum_b [V_b (e(b - 1, -delta_b) - e(b - 1, +1)) + v_own e(b - 1, -delta_b)],

all known within a chunk (a boundary at the chunk's end has its spike at the chunk's
last step). The stationary first request's down jumps are an age jump (load ``-1`` while
it lasts) or a remaining-life one (as a fresh request's). For the barrier step (stateless) ``e`` is exact:
``relu(z + alpha_a delta) - relu(z)`` with ``z`` the gap between ``t_A(T_j)`` and the
largest other term of the max (top-2 over instances per ratio). For a step model with
state (the micro-batch pipeline) the same weights build a zero-valued load perturbation
whose autodiff gives the first-order effect (``e`` linearised): see
``load_perturbation``.

The weights ``w_i`` are carried as *value-zero surrogates* ``w~_i`` (value 0, derivative
``w_i``), so the result ``Z`` is 0 and ``jax.grad``/``jvp`` of ``Z`` is the estimator.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._loads import cumsum_last


class JumpState(eqx.Module):
    """Per-slot cumulative jump weights at the start of a chunk (``(r_max, B)`` each).

    The ``down_*`` fields are ``None`` unless the workload has two-sided jumps
    (``Workload._has_down_jumps``)."""

    ended: jax.Array
    """Sum of ``w~`` of the slot's requests that ended before the chunk's first step."""
    current: jax.Array
    """``w~`` of the slot's current request."""
    age: jax.Array
    """``w~`` of the age jump of the stationary first request while it lasts (else 0)."""
    pend_own: jax.Array
    """``w~`` of a request that ended exactly at the chunk's first step (its boundary spike is there)."""
    pend_before: jax.Array
    """``Omega``-weight of the slot's requests ended before that boundary."""
    pend_delta: jax.Array
    """``delta_b`` of that boundary (tokens), 0 when none."""
    pending: jax.Array
    """Bool: a request ended exactly at the chunk's first step."""
    down_ended: jax.Array | None = None
    """Sum of down-jump ``v~`` of the slot's requests that ended at or before the chunk's first step."""
    down_current: jax.Array | None = None
    """Down-jump ``v~`` of the slot's current request."""
    age_down: jax.Array | None = None
    """Down-jump ``v~`` of the stationary first request's age (index one less) while it lasts."""

    @staticmethod
    def initial(age, remaining, age_down=None, remaining_down=None):
        z = jnp.zeros_like(remaining)
        down = {}
        if remaining_down is not None:
            down = dict(down_ended=z, down_current=remaining_down, age_down=age_down)
        return JumpState(
            ended=z, current=remaining, age=age, pend_own=z, pend_before=z, pend_delta=z, pending=z != z, **down
        )


def _slot_group_field(values, positions, rmax, G, L, B):
    """``(rmax, G, L)`` cumulative sum of ``values`` (``(rmax, B, K)``) scattered at
    ``positions`` (local steps; ``>= L`` dropped), slot ``s`` in group ``s % G``."""
    fdtype = values.dtype
    group = (jnp.arange(B) % G)[None, :, None]
    base = (jnp.arange(rmax)[:, None, None] * G + group) * L
    flat = jnp.where(positions < L, base + positions, rmax * G * L)
    buf = jnp.zeros(rmax * G * L, fdtype).at[flat.reshape(-1)].add(values.reshape(-1), mode="drop")
    return cumsum_last(buf.reshape(rmax, G, L))


class ChunkJumps(eqx.Module):
    """The jump weights of one chunk, per slot group and step, and per boundary spike.

    A spike at local step ``b_step`` changes the step's load by ``b_delta`` (tokens) for
    the weight ``b_before`` where it would otherwise be ``b_base`` (already counted in
    ``minus``/``plus``), and by ``b_own_delta`` for the weight ``b_own``."""

    minus: jax.Array
    """``(rmax, G, L)``: weight whose load changes by -1 at the step (``Omega``, age down)."""
    plus: jax.Array
    """``(rmax, G, L)``: weight whose load changes by +1 at the step (age up, ``Psi``)."""
    b_step: jax.Array
    """``(rmax, B, K)`` local step of each spike (``>= L``: none)."""
    b_delta: jax.Array
    """``(rmax, B, K)`` load change of the ``before`` weights at the spike (tokens)."""
    b_base: jax.Array
    """``(rmax, B, K)`` their load change without the spike (-1 or +1)."""
    b_own_delta: jax.Array
    """``(rmax, B, K)`` load change of the ``own`` weight at the spike (tokens)."""
    b_before: jax.Array
    """``(rmax, B, K)`` weight of the requests ended before the boundary."""
    b_own: jax.Array
    """``(rmax, B, K)`` weight of the request that ends at the boundary."""


def chunk_jumps(js: JumpState, starts, jump, new_weight, groups: int, L: int, new_down=None):
    """``(next JumpState, ChunkJumps)`` from the chunk's request starts ``(rmax, B, M)``,
    load jumps ``P_new - P_old - D_old`` and the new requests' surrogate weights (up
    jumps; ``new_down``: down jumps, with ``JumpState.down_*`` set)."""
    rmax, B, _ = starts.shape
    G = groups
    prev_w = jnp.concatenate([js.current[..., None], new_weight[..., :-1]], axis=-1)
    inside = starts < L
    before = js.ended[..., None] + js.pend_own[..., None] + jnp.cumsum(prev_w, axis=-1) - prev_w
    delta = jax.lax.stop_gradient(-jump - 1.0)
    # Omega: ended weight from step 0, the pending request's from step 1, each request
    # ending inside the chunk from the step after its successor started.
    one = jnp.ones((rmax, B, 1), jnp.int32)
    values = jnp.concatenate([js.ended[..., None], js.pend_own[..., None], jnp.where(inside, prev_w, 0.0)], -1)
    positions = jnp.concatenate([0 * one, one, jnp.where(inside, starts + 1, L)], -1)
    first = starts[..., :1]
    first_pos = jnp.where(first < L, first, L)
    # the stationary first request's age jumps while it lasts: +1 (up), -1 (down)
    age_values = jnp.concatenate([js.age[..., None], -js.age[..., None]], -1)
    age_positions = jnp.concatenate([0 * one, first_pos], -1)
    b_step = jnp.concatenate([jnp.where(js.pending, 0, L)[..., None], jnp.where(inside, starts, L)], -1)
    b_delta = jnp.concatenate([js.pend_delta[..., None], delta], -1)
    b_before = jnp.concatenate([js.pend_before[..., None], before], -1)
    b_own = jnp.concatenate([js.pend_own[..., None], prev_w], -1)
    b_base = -jnp.ones_like(b_delta)
    b_own_delta = b_delta + 1.0
    minus_v, minus_p, plus_v, plus_p = values, positions, age_values, age_positions
    nxt_down = {}
    if new_down is not None:
        # Down jumps (the request one step shorter): the slot's later sawtooth moves one
        # step earlier, load +1 from the request's end e on (``Psi``), except at the step
        # b - 1 before each later boundary b (and e - 1 for its own), where it is -delta_b.
        prev_v = jnp.concatenate([js.down_current[..., None], new_down[..., :-1]], axis=-1)
        upto = starts <= L  # boundaries whose spike step b - 1 lies in this chunk (b >= 1 always)
        before_v = js.down_ended[..., None] + jnp.cumsum(prev_v, axis=-1) - prev_v
        plus_v = jnp.concatenate([plus_v, js.down_ended[..., None], jnp.where(inside, prev_v, 0.0)], -1)
        plus_p = jnp.concatenate([plus_p, 0 * one, jnp.where(inside, starts, L)], -1)
        minus_v = jnp.concatenate([minus_v, js.age_down[..., None], -js.age_down[..., None]], -1)
        minus_p = jnp.concatenate([minus_p, 0 * one, first_pos], -1)
        b_step = jnp.concatenate([b_step, jnp.where(upto, starts - 1, L)], -1)
        b_delta = jnp.concatenate([b_delta, -delta], -1)
        b_base = jnp.concatenate([b_base, jnp.ones_like(delta)], -1)
        b_own_delta = jnp.concatenate([b_own_delta, -delta], -1)
        b_before = jnp.concatenate([b_before, before_v], -1)
        b_own = jnp.concatenate([b_own, prev_v], -1)
    cj = ChunkJumps(
        minus=_slot_group_field(minus_v, minus_p, rmax, G, L, B),
        plus=_slot_group_field(plus_v, plus_p, rmax, G, L, B),
        b_step=b_step,
        b_delta=b_delta,
        b_base=b_base,
        b_own_delta=b_own_delta,
        b_before=b_before,
        b_own=b_own,
    )
    # state after the chunk
    ended = js.ended + js.pend_own + jnp.sum(jnp.where(inside, prev_w, 0.0), axis=-1)
    at_end = starts == L
    started = jnp.sum(starts <= L, axis=-1)
    last = jnp.maximum(started - 1, 0)[..., None]
    take = lambda a: jnp.take_along_axis(a, last, axis=-1)[..., 0]
    has_new = started > 0
    pend = jnp.any(at_end, axis=-1)
    gone = first[..., 0] <= L  # the first request has ended by the next chunk's first step
    if new_down is not None:
        nxt_down = dict(
            down_ended=js.down_ended + jnp.sum(jnp.where(upto, prev_v, 0.0), axis=-1),
            down_current=jnp.where(has_new, take(new_down), js.down_current),
            age_down=jnp.where(gone, 0.0, js.age_down),
        )
    nxt = JumpState(
        ended=ended,
        current=jnp.where(has_new, take(new_weight), js.current),
        age=jnp.where(gone, 0.0, js.age),
        pend_own=jnp.sum(jnp.where(at_end, prev_w, 0.0), axis=-1),
        pend_before=jnp.where(pend, ended, 0.0),
        pend_delta=jnp.sum(jnp.where(at_end, delta, 0.0), axis=-1),
        pending=pend,
        **nxt_down,
    )
    return nxt, cj


def barrier_jump_time(cj: ChunkJumps, load, floor_time, alpha_a, beta_a, measured):
    """``(r_max,)``: ``sum_i w~_i Delta time_i`` over the chunk's measured steps for the
    barrier step (exact per-step effects). ``load`` ``(rmax, L)`` per instance,
    ``floor_time`` ``(r_max,)`` ``max(t_F, t_C)`` per ratio.

    The sum is linear in the weights, whose values are 0: its value is 0 and only its
    derivative carries the estimator. So the effects are computed in the derivative rule
    alone (``_weighted_effects``): a reverse pass through the checkpointed chunks
    takes them once, in the recomputation, and a plain forward never."""
    weights = (cj.minus, cj.plus, cj.b_before, cj.b_own)
    consts = (cj.b_step, cj.b_delta, cj.b_base, cj.b_own_delta, load, floor_time, alpha_a, beta_a, measured)
    consts = tuple(jax.lax.stop_gradient(x) for x in consts)
    return _weighted_effects(weights, consts)


@jax.custom_jvp
def _weighted_effects(weights, consts):
    """``sum`` of the weights times their effects: 0, as every weight's value is 0."""
    del consts
    return 0.0 * weights[0][:, 0, 0]  # shaped and batched (vmap) as the weights


@_weighted_effects.defjvp
def _weighted_effects_jvp(primals, tangents):
    weights, consts = primals
    t_minus, t_plus, t_before, t_own = tangents[0]
    rmax = t_minus.shape[0]
    r_of, j_of = _pairs(rmax)
    e_minus, e_plus, e_before, e_own = _effects(*consts)
    per_pair = jnp.sum(t_minus[j_of, 0, :] * e_minus + t_plus[j_of, 0, :] * e_plus, axis=1) + jnp.sum(
        t_before[j_of] * e_before + t_own[j_of] * e_own, axis=(1, 2)
    )
    one_hot = jnp.asarray(r_of[None, :] == np.arange(rmax)[:, None], per_pair.dtype)  # (r, P)
    return _weighted_effects(weights, consts), one_hot @ per_pair


def _pairs(rmax: int):
    """``(r_of, j_of)``: the pairs (ratio index ``r``, instance ``j <= r``) as int arrays,
    instance ``j`` being in the system with ratio ``r + 1`` (``P = r_max (r_max + 1) / 2``)."""
    r_of, j_of = np.tril_indices(rmax)
    return r_of, j_of


def _effects(b_step, b_delta, b_base, b_own_delta, load, floor_time, alpha_a, beta_a, measured):
    """The exact time effects per unit weight, for each pair ``p`` of ``_pairs``
    (ratio ``r``, instance ``j`` in it): ``(P, L)`` of a -1 and of a +1 load change of
    instance ``j`` at each step, and ``(P, B, K)`` of each spike of instance ``j`` on its
    ``before`` and ``own`` weights (0 where unused: steps not measured, spikes outside
    the chunk)."""
    rmax, L = load.shape
    r_of, j_of = _pairs(rmax)
    j = jnp.arange(rmax)
    in_system = j[None, :] < (j[:, None] + 1)  # (r, j): instance j in the system with ratio r
    # top-2 loads over the first r instances, per step: (r, L)
    masked = jnp.where(in_system[:, :, None], load[None, :, :], -jnp.inf)  # (r, j, L)
    arg = jnp.argmax(masked, axis=1)  # (r, L)
    top = jnp.max(masked, axis=1)
    second = jnp.max(jnp.where(j[None, :, None] == arg[:, None, :], -jnp.inf, masked), axis=1)
    t_top = alpha_a * top + beta_a

    def effect(z, delta):
        return jax.nn.relu(z + alpha_a * delta) - jax.nn.relu(z)

    # per pair and step: z = t_A(T_j) minus the largest other term of the step's max
    load_j, top_r, floor_r = load[j_of], top[r_of], floor_time[r_of][:, None]
    as_top = jnp.minimum(alpha_a * (top_r - second[r_of]), t_top[r_of] - floor_r)
    other = jnp.minimum(alpha_a * (load_j - top_r), alpha_a * load_j + beta_a - floor_r)
    z_all = jnp.where(j_of[:, None] == arg[r_of], as_top, other)  # (P, L)
    # Unused gaps are set to 0 before the effects are taken and unused effects to 0 after:
    # a non-finite effect would otherwise give 0 * nan = nan.
    use = jnp.broadcast_to(measured[None, :], z_all.shape)
    z = jnp.where(use, z_all, 0.0)
    e_minus = jnp.where(use, effect(z, -1.0), 0.0)
    e_plus = jnp.where(use, effect(z, 1.0), 0.0)
    # spikes: the gaps gathered at each spike's step -> (P, B, K)
    b = jnp.minimum(b_step, L - 1)
    valid = (b_step < L) & measured[b]
    zb = jnp.take_along_axis(z_all, b[j_of].reshape(len(j_of), -1), axis=-1).reshape((len(j_of), *b.shape[1:]))
    use_b = valid[j_of]
    d = jnp.where(use_b, b_delta[j_of], 0.0)
    d_own = jnp.where(use_b, b_own_delta[j_of], 0.0)
    zb = jnp.where(use_b, zb, 0.0)
    e_before = jnp.where(use_b, effect(zb, d) - effect(zb, b_base[j_of]), 0.0)
    e_own = jnp.where(use_b, effect(zb, d_own), 0.0)
    return e_minus, e_plus, e_before, e_own


def load_perturbation(cj: ChunkJumps, B: int, L: int):
    """``(rmax, G, L)`` zero-valued load perturbation whose derivative is
    ``sum_i w_i delta_i(t)`` (the first-order, linearised effect of every jump)."""
    rmax, G = cj.minus.shape[:2]
    valid = cj.b_step < L
    d, d_own = jnp.where(valid, cj.b_delta, 0.0), jnp.where(valid, cj.b_own_delta, 0.0)  # no 0 * inf in reverse
    spike = cj.b_before * (d - cj.b_base) + cj.b_own * d_own
    spikes = _slot_group_field(spike, cj.b_step, rmax, G, L, B)
    # the field is a cumulative sum: add the spike at b and remove it at b + 1
    spikes = spikes - _slot_group_field(spike, jnp.where(cj.b_step < L, cj.b_step + 1, L), rmax, G, L, B)
    return -cj.minus + cj.plus + spikes
