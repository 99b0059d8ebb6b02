"""The one L-BFGS loop of the fitters (workload families, Huber lines, throughput).

Every optimisation in :mod:`afdjax._fit` is this loop: ``optax.lbfgs`` with its zoom line
search under a ``lax.while_loop``, stopped when the gradient norm falls below ``tol`` or
after ``maxiter`` iterations. It traces inside the caller's ``jit`` (and ``vmap``).
"""

from __future__ import annotations

import jax
import optax


def lbfgs_minimise(fun, init: jax.Array, tol, maxiter=200, *, return_count: bool = False):
    """Minimise ``fun`` from ``init`` with ``optax.lbfgs`` (zoom line search).

    **Arguments:**

    - ``fun``: scalar objective of a parameter array (or pytree) shaped like ``init``.
    - ``init``: starting point.
    - ``tol``: stop once the gradient norm at the current point is below it.
    - ``maxiter``: iteration limit (a Python int or a traced integer); ``0`` returns
      ``init`` unchanged (used to evaluate a closed-form estimate).
    - ``return_count``: also return the number of iterations run.

    **Returns:** the final parameters, or ``(parameters, iterations)``.
    """
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state

    def cond(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad = optax.tree.get(state, "grad")
        # The gradient in the state is only valid after the first step (count > 0).
        return (count < maxiter) & ((count == 0) | (optax.tree.norm(grad) >= tol))

    params, state = jax.lax.while_loop(cond, step, (init, opt.init(init)))
    if return_count:
        return params, optax.tree.get(state, "count")
    return params
