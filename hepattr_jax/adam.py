"""Adam-aware TracIn: the first-order effect of an *Adam* step, not an SGD step.

TracIn (:mod:`hepattr_jax.tracin`) sums ``eta_k <g(z'), g(z)>``: the change of a test event's
loss when SGD steps along a training event's gradient. The models here train with AdamW, whose
step at checkpoint ``k`` moves the parameters along ``P_k g`` with the diagonal preconditioner

    P_k = diag(1 / (sqrt(v_k) + eps)),   v_k = nu_k / (1 - b2^t_k)

(``nu_k`` the second-moment estimate in the optimiser state saved with checkpoint ``k``, bias
corrected as the step uses it; ``eps`` the optimiser's; momentum and the decoupled weight decay
are left out, as LESS, Xia et al. 2024, arXiv 2402.04333, and TrackStar, Chang et al. 2024,
arXiv 2410.17413, do). The first-order effect of that step on the test loss gives

    I_adam(z, z') = sum_k eta_k <g(z'), P_k g(z)>,   SI_adam(z) = sum_k eta_k g(z)^T P_k g(z).

``P_k`` is diagonal and positive, so this is TracIn on the mapped gradients ``P_k^{1/2} g``: one
:class:`~hepattr_jax.per_example.GradientMap`, and every TracIn kernel (self-influence, matrix,
top-k, dense projections) computes it unchanged.

Which variant a user gets: ``hepattr influence`` and the ``scored_*`` functions compute plain
TracIn unless asked (``method="adam"``), so the scores stay those of the paper the method is
named after; the measured comparison is in experiments/attribution_quality.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hepattr_jax.errors import ConfigError
from hepattr_jax.per_example import GradientMap
from hepattr_jax.train import ADAM_EPS


def scale_gradient(sqrt_p, grads):
    """``P^{1/2} g`` leaf by leaf (``sqrt_p``: the parameters' tree of ``P^{1/2}``)."""
    return jax.tree_util.tree_map(lambda s, g: s.astype(g.dtype) * g, sqrt_p, grads)


def preconditioner_sqrt(second_moments, eps: float = ADAM_EPS):
    """``P^{1/2} = (sqrt(v) + eps)^{-1/2}`` leaf by leaf (any leading axes)."""
    return jax.tree_util.tree_map(lambda v: (jnp.sqrt(v) + eps) ** -0.5, second_moments)


def adam_gradient_map(ckpts, eps: float = ADAM_EPS) -> GradientMap:
    """The :class:`~hepattr_jax.per_example.GradientMap` of Adam-aware TracIn at the checkpoints
    ``ckpts`` (:class:`hepattr_jax.tracin.Checkpoints` with ``second_moments``, as
    :func:`hepattr_jax.runs.load_run` gives them)."""
    if ckpts.second_moments is None:
        raise ConfigError(
            "Adam-aware TracIn needs each checkpoint's Adam second moment: these checkpoints "
            "have none (reopen the run with hepattr_jax.runs.load_run, or pass second_moments "
            "to Checkpoints.from_list)"
        )
    sqrt_p, bad = _checked_preconditioner_sqrt(ckpts.second_moments, eps)
    if bool(bad):
        raise ConfigError("Adam second moments: negative, NaN or inf entries")
    return GradientMap(scale_gradient, sqrt_p, "adam")


@functools.partial(jax.jit, static_argnames="eps")
def _checked_preconditioner_sqrt(second_moments, eps: float):
    """:func:`preconditioner_sqrt` and whether any entry is negative, NaN or inf, in one
    compiled program (eagerly, each operation compiles for each leaf shape: seconds)."""
    leaves = jax.tree_util.tree_leaves(second_moments)
    bad = jnp.stack([jnp.any(~jnp.isfinite(v) | (v < 0)) for v in leaves]).any()
    return preconditioner_sqrt(second_moments, eps), bad
