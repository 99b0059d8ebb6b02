"""Small optimisation helpers shared by the fitters."""

from __future__ import annotations

import jax
import optax


def lbfgs_minimise(fun, init: jax.Array, tol, maxiter: int = 200) -> jax.Array:
    """Minimise ``fun`` from ``init`` with ``optax.lbfgs`` (zoom line search) until the
    gradient norm is below ``tol`` or ``maxiter`` iterations."""
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
        return (count == 0) | ((count < maxiter) & (optax.tree.norm(grad) >= tol))

    params, _ = jax.lax.while_loop(cond, step, (init, opt.init(init)))
    return params
