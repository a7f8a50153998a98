"""NAP-guided slimming: choose a smaller model from the relative neural activation patterns.

The models of :mod:`hepattr_jax.models` are sized by a few knobs (``hidden``: the node width of
the encoder, of every block's MLPs and of the pooled latent; ``n_blocks`` / ``n_layers``; and
``readout_hidden``), so a smaller model is a choice of knob values, not of single neurons. With
the RNA of every layer (:func:`hepattr_jax.explain.activations.relative_neural_activation`):

* **neuron score** ``s_lj = max_c RNA_c(l, j)``, the activity of neuron ``j`` of layer ``l`` for
  either class (a neuron silent for both carries nothing the readout can use). A pooled layer
  (``readout_in``: ``[mean | max]`` of the ``hidden`` node channels) is folded to its channels by
  averaging the copies.
* **layer weight** ``w_l = mean_j |RNA_1(l, j) - RNA_0(l, j)|``, the layer's class difference
  (arXiv 2210.04371: layers whose patterns differ between the classes carry the information).
* **retained score** of a candidate: a layer narrowed to ``k`` channels keeps its ``k`` most
  active ones, ``R_l = sum_{top k} s_lj / sum_j s_lj``; a layer of a removed block keeps
  ``R_l = 0``; ``score = sum_l w_l R_l / sum_l w_l`` (1 for the full model).

:func:`nap_choice` takes the candidate with the largest retained score among those with at most
``budget`` parameters; :func:`uniform_choice` shrinks every width by one factor at fixed depth;
:func:`random_choice` draws a candidate of the same size at random. Parameter counts come from
:func:`param_count` (shapes only, nothing is computed).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hepattr_jax.models import make_model

DEPTH_KNOB = {"edgeconv": "n_blocks", "interaction": "n_blocks", "gcn": "n_layers"}
DEFAULTS = {
    "edgeconv": {"hidden": 64, "n_blocks": 3, "readout_hidden": 64},
    "interaction": {"hidden": 64, "n_blocks": 2, "readout_hidden": 64},
    "gcn": {"hidden": 64, "n_layers": 3, "readout_hidden": 64},
}
_BLOCK = re.compile(r"^(?:edge|node|gcn)(\d+)")


def full_kwargs(model: str, model_kwargs: Mapping | None = None) -> dict:
    """The model's size knobs with the defaults filled in (other kwargs dropped)."""
    out = dict(DEFAULTS[model])
    out.update({k: v for k, v in (model_kwargs or {}).items() if k in out})
    return out


def layer_knob(model: str, layer: str) -> tuple[str | None, int | None]:
    """``(width knob, block index)`` of an activation layer name from
    :meth:`~hepattr_jax.explain.predict.BatchedPredictor.activations` (``encoder``,
    ``edge1_0``, ``edge0/dense1``, ``gcn2``, ``readout_in``, ``readout_0``)."""
    if layer.startswith("readout_0"):
        return "readout_hidden", None
    m = _BLOCK.match(layer)
    if m:
        return "hidden", int(m.group(1))
    if layer in ("encoder", "readout_in"):
        return "hidden", None
    return None, None


def neuron_scores(pattern: Mapping, hidden: int | None = None) -> np.ndarray:
    """``s_j = max(RNA_0, RNA_1)`` ``[D]``; folded to ``[hidden]`` (mean of the pooled copies)
    when ``D`` is a multiple ``> 1`` of ``hidden``."""
    s = np.maximum(np.asarray(pattern["rna_0"]), np.asarray(pattern["rna_1"]))
    if hidden and len(s) != hidden and len(s) % hidden == 0:
        s = s.reshape(-1, hidden).mean(0)
    return s


def layer_table(patterns: Mapping[str, Mapping], model: str, kwargs: Mapping) -> dict:
    """Per layer: ``width``, ``knob``, ``block``, ``activity`` (mean neuron score),
    ``class_diff`` (mean |RNA difference|, the layer weight), ``sparsity`` (fraction of
    neurons with score < 0.2: silent for both classes), ``n_active`` (the others)."""
    out = {}
    for name, p in patterns.items():
        knob, block = layer_knob(model, name)
        s = neuron_scores(p, kwargs.get("hidden") if knob == "hidden" else None)
        out[name] = {
            "width": len(s),
            "knob": knob,
            "block": block,
            "activity": float(s.mean()),
            "class_diff": float(np.mean(p["diff"])),
            "sparsity": float(np.mean(s < 0.2)),
            "n_active": int(np.sum(s >= 0.2)),
        }
    return out


def retained_score(
    patterns: Mapping[str, Mapping], model: str, full: Mapping, candidate: Mapping
) -> float:
    """``sum_l w_l R_l / sum_l w_l`` of ``candidate`` (knob values) against the ``full`` model
    whose ``patterns`` these are; see the module docstring."""
    depth = DEPTH_KNOB[model]
    num = den = 0.0
    for name, p in patterns.items():
        knob, block = layer_knob(model, name)
        if knob is None:
            continue
        w = float(np.mean(p["diff"]))
        s = np.sort(neuron_scores(p, full["hidden"] if knob == "hidden" else None))[::-1]
        if block is not None and block >= candidate[depth]:
            r = 0.0
        else:
            tot = s.sum()
            r = float(s[: candidate[knob]].sum() / tot) if tot > 0 else 1.0
        num += w * r
        den += w
    return num / den if den > 0 else 1.0


def _dummy_graph(n_node_features: int, n_globals: int) -> jraph.GraphsTuple:
    return jraph.GraphsTuple(
        nodes=jnp.zeros((3, n_node_features)),
        edges=None,
        senders=jnp.array([0, 1], jnp.int32),
        receivers=jnp.array([1, 0], jnp.int32),
        globals=jnp.zeros((2, n_globals)),
        n_node=jnp.array([2, 1], jnp.int32),
        n_edge=jnp.array([2, 0], jnp.int32),
    )


def param_count(
    model: str, kwargs: Mapping, n_node_features: int, n_globals: int, use_globals: bool
) -> int:
    """Number of parameters of ``model`` with ``kwargs`` (from shapes: ``jax.eval_shape``)."""
    m = make_model(model, use_globals=use_globals, **kwargs)
    shapes = jax.eval_shape(m.init, jax.random.key(0), _dummy_graph(n_node_features, n_globals))
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))


def candidates(model: str, full: Mapping, step: int = 8) -> list[dict]:
    """Every knob setting with widths in ``step, 2 step, ..`` up to the full width and any
    depth from 1 to the full depth."""
    depth = DEPTH_KNOB[model]
    hs = range(step, full["hidden"] + 1, step)
    rs = range(step, full["readout_hidden"] + 1, step)
    ds = range(1, full[depth] + 1)
    return [
        {"hidden": h, depth: d, "readout_hidden": r} for h, d, r in itertools.product(hs, ds, rs)
    ]


def nap_choice(
    patterns: Mapping[str, Mapping],
    model: str,
    full: Mapping,
    counts: Sequence[tuple[dict, int]],
    budget: int,
) -> tuple[dict, list[dict]]:
    """The candidate with the largest :func:`retained_score` among ``counts`` (``(kwargs,
    n_params)`` pairs) with ``n_params <= budget`` (ties: more parameters, then the order
    given), and every candidate's ``{"kwargs", "n_params", "retained"}`` sorted by score."""
    scored: list[dict[str, Any]] = [
        {
            "kwargs": dict(k),
            "n_params": int(n),
            "retained": retained_score(patterns, model, full, k),
        }
        for k, n in counts
    ]
    fits = [c for c in scored if c["n_params"] <= budget]
    if not fits:
        raise ValueError(f"no candidate has at most {budget} parameters")
    best = max(fits, key=lambda c: (round(c["retained"], 12), c["n_params"]))
    return best["kwargs"], sorted(scored, key=lambda c: -c["retained"])


def uniform_choice(full: Mapping, count_fn, target: int) -> dict:
    """Every width scaled by one factor (``readout_hidden`` in proportion to ``hidden``), depth
    kept: the widest such model with at most ``target`` parameters (``count_fn(kwargs)``)."""
    best = None
    for h in range(1, full["hidden"] + 1):
        k = dict(full)
        k["hidden"] = h
        k["readout_hidden"] = max(1, round(h * full["readout_hidden"] / full["hidden"]))
        if count_fn(k) <= target:
            best = k
    if best is None:
        raise ValueError(f"no uniformly shrunk model has at most {target} parameters")
    return best


def random_choice(
    counts: Sequence[tuple[dict, int]],
    target: int,
    rng: np.random.Generator,
    *,
    tol: float = 0.05,
    exclude: Sequence[Mapping] = (),
) -> dict:
    """A candidate drawn uniformly from those with ``|n_params - target| <= tol * target``
    (``exclude``: kwargs not to draw, e.g. the NAP and uniform choices)."""
    pool = [dict(k) for k, n in counts if abs(n - target) <= tol * target and k not in exclude]
    if not pool:
        raise ValueError(f"no candidate within {tol:.0%} of {target} parameters")
    return pool[int(rng.integers(len(pool)))]
