"""The JAX core of :func:`afdjax.fit_latency`: non-negative robust lines, point fit and
bootstrap replicates in one compiled program (method in :mod:`afdjax._fit._latency`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ._lbfgs import lbfgs_minimise

HUBER_EFFICIENCY_CONSTANT = 1.345
"""Huber's tuning constant (95 % efficiency under Gaussian noise), times the robust sigma."""
MAD_TO_SIGMA = 1.482602218505602
"""``1 / Phi^-1(3/4)``: MAD times this estimates the standard deviation of Gaussian noise."""
CONFIDENCE = 0.95


def _weighted_median(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Median of ``values`` with non-negative weights (integer weights: the median of the
    sample with each value repeated ``weight`` times; the mean of the two middle values when
    the total weight is even, like ``numpy.median``)."""
    order = jnp.argsort(values)
    v, w = values[order], weights[order]
    cumulative = jnp.cumsum(w)
    half = 0.5 * cumulative[-1]
    lower = jnp.argmax(cumulative >= half)
    upper = jnp.argmax(cumulative > half)
    return 0.5 * (v[lower] + v[upper])


def _line_statistics(x: jax.Array, y: jax.Array, w: jax.Array, huber: bool) -> dict:
    """Weighted moments, the least-squares line in standardised units and the Huber scale.

    ``w`` are row weights: 1 for data and 0 for padding in the point fit, resampling
    counts in a bootstrap replicate. ``valid`` is False when ``x`` is constant."""
    dtype = x.dtype
    eps = jnp.finfo(dtype).eps
    total = jnp.sum(w)
    mx = jnp.sum(w * x) / total
    my = jnp.sum(w * y) / total
    sxx = jnp.sum(w * (x - mx) ** 2) / total
    syy = jnp.sum(w * (y - my) ** 2) / total
    valid = sxx > (eps * jnp.maximum(jnp.max(jnp.abs(x) * (w > 0)), 1.0)) ** 2
    sx = jnp.where(valid, jnp.sqrt(sxx), 1.0)
    sy = jnp.maximum(jnp.sqrt(syy), eps * jnp.maximum(jnp.abs(my), 1.0))
    z = (x - mx) / sx  # weighted-centred, so the columns 1 and z are w-orthogonal
    slope_std = jnp.sum(w * z * (y - my) / sy) / jnp.sum(w * z * z)  # OLS slope, standardised
    rx = jnp.sqrt(jnp.sum(w * x * x) / total)
    rx = jnp.where(rx > 0, rx, 1.0)
    q = x / rx
    through_origin_std = jnp.sum(w * q * (y / sy)) / jnp.sum(w * q * q)  # OLS with b = 0
    if huber:
        residual = (y - my) / sy - slope_std * z
        mad = _weighted_median(jnp.abs(residual - _weighted_median(residual, w)), w)
        delta_std = jnp.maximum(HUBER_EFFICIENCY_CONSTANT * MAD_TO_SIGMA * mad, 100 * eps)
    else:
        delta_std = jnp.asarray(jnp.nan, dtype)
    return dict(
        w=w,
        total=total,
        mx=mx,
        my=my,
        sx=sx,
        sy=sy,
        rx=rx,
        valid=valid,
        delta_std=delta_std,
        slope_std=slope_std,
        through_origin_std=through_origin_std,
    )


def _mean_loss(residual_std: jax.Array, st: dict, huber: bool) -> jax.Array:
    """Weighted mean loss of residuals in units of ``sy``."""
    if huber:
        rho = optax.losses.huber_loss(residual_std, delta=st["delta_std"])
    else:
        rho = 0.5 * residual_std**2
    return jnp.sum(st["w"] * rho) / st["total"]


def _huber_solve(x, y, st, offset, col0, col1, init):
    """Minimise the Huber loss of ``(y - offset) / sy - c0 (col0[0] + col0[1] x) - ...`` over
    ``c`` (one entry per given column) with L-BFGS; columns are built from scalars so that no
    (problem, row) array is stored."""
    eps = jnp.finfo(x.dtype).eps
    tol = eps ** (2 / 3) * st["delta_std"]
    target = (y - offset) / st["sy"]

    def objective(c):
        fitted = c[0] * (col0[0] + col0[1] * x)
        if col1 is not None:
            fitted = fitted + c[1] * (col1[0] + col1[1] * x)
        return _mean_loss(target - fitted, st, True)

    return lbfgs_minimise(objective, init, tol)


def _free_line(x, y, st, huber: bool) -> tuple[jax.Array, jax.Array]:
    """The unconstrained minimiser ``(a, b)``: Huber by L-BFGS from the least-squares line
    in the coordinates ``(y - my) / sy ~ c0 + c1 (x - mx) / sx``; l2 in closed form."""
    mx, my, sx, sy, slope = st["mx"], st["my"], st["sx"], st["sy"], st["slope_std"]
    if not huber:
        a = slope * sy / sx
        return a, my - a * mx
    one, zero = jnp.ones_like(mx), jnp.zeros_like(mx)
    c = _huber_solve(x, y, st, my, jnp.stack([one, zero]), jnp.stack([-mx / sx, 1 / sx]), jnp.stack([zero, slope]))
    return c[1] * sy / sx, my + sy * (c[0] - c[1] * mx / sx)


def _face_lines(x, y, st, huber: bool) -> tuple[jax.Array, jax.Array]:
    """Minimisers on the faces of the feasible set: ``b`` with ``a = 0`` (a location
    problem, ``y / sy ~ c``) and ``a`` with ``b = 0`` (``y / sy ~ c x / rx``), each started
    from its least-squares solution; the two Huber problems run as one vmapped solve."""
    my, sy, rx = st["my"], st["sy"], st["rx"]
    if not huber:
        return my, st["through_origin_std"] * sy / rx
    one, zero = jnp.ones_like(my), jnp.zeros_like(my)
    offsets = jnp.stack([my, zero])
    cols = jnp.array([[one, zero], [zero, 1 / rx]])
    inits = jnp.stack([zero, st["through_origin_std"]])[:, None]
    c = jax.vmap(lambda o, col, c0: _huber_solve(x, y, st, o, col, None, c0))(offsets, cols, inits)
    return my + sy * c[0, 0], c[1, 0] * sy / rx


def _select(x, y, st, huber, free, faces) -> dict:
    """The minimiser over ``a >= 0, b >= 0``: the free line if feasible, else the feasible
    face minimiser (or the vertex 0, 0) of least loss. Exact for a convex loss: the
    constrained minimiser minimises the loss over the affine hull of the face it lies on."""
    a_u, b_u = free
    b_face, a_face = faces
    zero = jnp.zeros_like(a_u)
    candidates = jnp.array([[a_u, b_u], [zero, b_face], [a_face, zero], [zero, zero]])
    feasible = jnp.array([(a_u >= 0) & (b_u >= 0), b_face >= 0, a_face >= 0, True])  # NaN: not feasible

    def loss_at(a, b):
        return _mean_loss((y - a * x - b) / st["sy"], st, huber)

    losses = jnp.where(feasible, jax.vmap(loss_at)(candidates[:, 0], candidates[:, 1]), jnp.inf)
    best = jnp.where(feasible[0], 0, jnp.argmin(losses))
    return dict(
        estimate=candidates[best],
        unconstrained=candidates[0],
        delta=st["delta_std"] * st["sy"],
        valid=st["valid"] & jnp.all(jnp.isfinite(candidates[best])),
    )


def _fit_lines(x: jax.Array, y: jax.Array, weights: jax.Array, huber: bool) -> dict:
    """Non-negative lines ``y ~ a x + b`` for a batch of row-weight vectors ``weights``
    (shape ``(k, rows)``), vmapped. The face problems are solved only when some line of the
    batch needs them (a ``lax.cond`` on the whole batch, outside the vmap, so it stays a
    real branch). Returns ``estimate`` and ``unconstrained`` ``(k, 2)``, ``delta`` (units
    of ``y``) and ``valid`` ``(k,)``."""
    stats = jax.vmap(lambda w: _line_statistics(x, y, w, huber))(weights)
    free = jax.vmap(lambda st: _free_line(x, y, st, huber))(stats)
    needs_faces = ~((free[0] >= 0) & (free[1] >= 0)) & stats["valid"]
    faces = jax.lax.cond(
        jnp.any(needs_faces),
        lambda: jax.vmap(lambda st: _face_lines(x, y, st, huber))(stats),
        lambda: (jnp.full_like(free[0], jnp.nan), jnp.full_like(free[1], jnp.nan)),
    )
    return jax.vmap(lambda st, f, g: _select(x, y, st, huber, f, g))(stats, free, faces)


@functools.partial(jax.jit, static_argnames=("huber", "n_bootstrap", "chunk"))
def _fit_replicates(x, y, num_rows, key, *, huber: bool, n_bootstrap: int, chunk: int):
    """The point fit (index 0) and ``n_bootstrap`` pairs-bootstrap replicates: index
    ``i >= 1`` resamples the first ``num_rows`` rows (the rest is padding) with replacement
    using ``fold_in(key, i - 1)``. Replicates run ``chunk`` at a time under ``jax.vmap``
    (``lax.map`` over chunks bounds the memory); rows of an array ``(n_bootstrap + 1, ...)``."""
    in_data = (jnp.arange(x.shape[0]) < num_rows).astype(x.dtype)
    total = n_bootstrap + 1
    n_chunks = -(-total // chunk)

    def weights(i):
        rows = jax.random.randint(jax.random.fold_in(key, i - 1), x.shape, 0, num_rows)
        counts = jnp.zeros_like(x).at[rows].add(in_data)
        return jnp.where(i == 0, in_data, counts)

    def run_chunk(indices):
        return _fit_lines(x, y, jax.vmap(weights)(indices), huber)

    out = jax.lax.map(run_chunk, jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk))
    return jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:total], out)


_CHUNK_ELEMENTS = 1 << 19
"""Bootstrap replicates run in chunks of about this many (replicate, row) elements."""


def _padded_size(n: int) -> int:
    """Rows are padded (weight 0) to a power of two >= 8: few distinct shapes, few compiles."""
    return max(8, 1 << (n - 1).bit_length())
