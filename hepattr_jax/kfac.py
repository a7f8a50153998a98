"""Layer statistics for Kronecker-factored curvature (K-FAC, EK-FAC) on graph models.

For every dense layer of any flax model (:mod:`hepattr_jax.capture`: each ``nn.Dense`` call and
each :func:`~hepattr_jax.capture.kernel_rows` use), one pass over a set of events accumulates,
at every checkpoint, the input and output-gradient second moments the layer's Kronecker factors
are made of, weighted per *graph* as the per-graph gradient ``G = sum_t a_t delta_t^T`` requires
(a graph's rows are its nodes, edges or pooled row, never an example each):

* ``expand``: ``A = E'_g[(1/T_g) sum_t a_t a_t^T]``, ``S = E_g[c_g sum_t delta_t delta_t^T]``;
* ``reduce``: ``A = E'_g[abar_g abar_g^T]`` (row mean), ``S = E_g[c_g dbar_g dbar_g^T]`` (row
  sum);

with ``a_t`` the row's input and a 1 for the bias, ``delta_t`` the gradient of the event's logit
at the row's output, ``c_g`` the event's Fisher weight (:func:`hepattr_jax.per_example.
fisher_weight`: the true Fisher of the binary cross-entropy by default), ``E_g`` the mean over
events and ``E'_g`` the mean over the events in which the layer has rows (see
:func:`hepattr_jax.capture.layer_moments`). A layer's rows in an event are those that carry
gradient (the rows ``G`` is made of): padding never enters, so no figure depends on the
bucketing. For a layer after pooling (one row per graph) both settings are the plain K-FAC
factors. Parameters no dense layer covers (LayerNorm scales, tokens) get their diagonal Fisher
``E_g[c_g g^2]``.

The pass streams through :mod:`hepattr_jax.engine` with chunk totals; with a store
(:func:`hepattr_jax.scoring.scored_layer_statistics`) every chunk's sum is written atomically,
a killed run resumes, and the result equals an uninterrupted run's bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from hepattr_jax.engine import stream_totals
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import GraphSet
from hepattr_jax.per_example import check_layerwise, layer_statistics_kernel, one_example

MOMENTS = ("a_expand", "s_expand", "a_reduce", "s_reduce")


class LayerStatistics(NamedTuple):
    """Per-layer Kronecker-factor statistics at ``K`` checkpoints (means over ``n_events``).

    Attributes:
      kernels: per layer the kernel's parameter path (``"params/…/kernel"``), capture order.
      biases: per layer the bias path, or ``""`` for a layer without one.
      a_expand, a_reduce: per layer ``[K, m, m]`` (``m`` kernel rows, then the bias row).
      s_expand, s_reduce: per layer ``[K, p, p]``.
      rows: ``[K, L]`` the mean rows per event of each layer (rows that carry gradient).
      layer_events: ``[K, L]`` the share of events in which the layer has rows.
      rest: the uncovered parameters' paths; ``rest_diag`` their diagonal Fisher ``[K, *shape]``.
      n_events: events averaged; ``mean_weight``: ``[K]`` mean Fisher weight ``c``.
      fisher: ``"true"`` or ``"empirical"``.
    """

    kernels: tuple[str, ...]
    biases: tuple[str, ...]
    a_expand: tuple[np.ndarray, ...]
    s_expand: tuple[np.ndarray, ...]
    a_reduce: tuple[np.ndarray, ...]
    s_reduce: tuple[np.ndarray, ...]
    rows: np.ndarray
    layer_events: np.ndarray
    rest: tuple[str, ...]
    rest_diag: tuple[np.ndarray, ...]
    n_events: int
    mean_weight: np.ndarray
    fisher: str

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat named arrays (what the store keeps); :meth:`from_arrays` inverts it."""
        out: dict[str, np.ndarray] = {
            "kernels": np.array(self.kernels, dtype=str),
            "biases": np.array(self.biases, dtype=str),
            "rest": np.array(self.rest, dtype=str),
            "rows": self.rows,
            "layer_events": self.layer_events,
            "n_events": np.asarray(self.n_events, np.int64),
            "mean_weight": self.mean_weight,
            "fisher": np.asarray(self.fisher, dtype=str),
        }
        for name in MOMENTS:
            for i, x in enumerate(getattr(self, name)):
                out[f"{name}_{i:03d}"] = x
        for i, x in enumerate(self.rest_diag):
            out[f"rest_diag_{i:03d}"] = x
        return out

    @classmethod
    def from_arrays(cls, a) -> LayerStatistics:
        n_layers, n_rest = len(a["kernels"]), len(a["rest"])
        moments = {
            name: tuple(np.asarray(a[f"{name}_{i:03d}"]) for i in range(n_layers))
            for name in MOMENTS
        }
        return cls(
            kernels=tuple(str(k) for k in a["kernels"]),
            biases=tuple(str(b) for b in a["biases"]),
            rows=np.asarray(a["rows"]),
            layer_events=np.asarray(a["layer_events"]),
            rest=tuple(str(r) for r in a["rest"]),
            rest_diag=tuple(np.asarray(a[f"rest_diag_{i:03d}"]) for i in range(n_rest)),
            n_events=int(a["n_events"]),
            mean_weight=np.asarray(a["mean_weight"]),
            fisher=str(a["fisher"]),
            **moments,
        )


_SPECS: dict = {}


def capture_spec(layout, params, gs: GraphSet):
    """The capture spec of the margin at ``params`` on one event of ``gs``: what unpacking
    needs (layer sizes and order, the rest's shapes), which does not depend on the bucket, so
    it is traced once per layout, parameter shapes and input widths (an abstract trace of the
    model costs tens of milliseconds, a small set's whole pass)."""
    from hepattr_jax.capture import discover

    leaves, treedef = jax.tree_util.tree_flatten(params)
    key = (
        layout,
        treedef,
        tuple((tuple(x.shape), str(x.dtype)) for x in leaves),
        gs.events.n_features,
        gs.events.n_globals,
    )
    if key not in _SPECS:
        _SPECS[key] = discover(layout.margin_one, params, one_example(layout, gs, 0))
    return _SPECS[key]


def unpack_statistics(spec, total: np.ndarray, fisher: str) -> LayerStatistics:
    """:class:`LayerStatistics` from the summed ``[K, F]`` chunk totals of
    :func:`hepattr_jax.per_example.layer_statistics_kernel` (divided by the event count)."""
    total = np.asarray(total, np.float64)
    n = total[:, -2]
    if np.any(n <= 0):
        raise ConfigError("layer statistics: no events")
    k, off = total.shape[0], 0
    moments: dict[str, list] = {name: [] for name in MOMENTS}
    rows = []

    def take(shape):
        nonlocal off
        size = int(np.prod(shape))
        x = total[:, off : off + size].reshape(k, *shape) / n.reshape(-1, *([1] * len(shape)))
        off += size
        return x

    events = []
    for layer in spec.layers:
        m, p = layer.m, layer.p
        for name, shape in zip(MOMENTS, ((m, m), (p, p), (m, m), (p, p)), strict=True):
            moments[name].append(take(shape))
        rows.append(take(()))
        events.append(take(()))  # the share of events with rows
        # The input factors average over the events whose layer carries gradient.
        share = np.maximum(events[-1], 1e-300)[:, None, None]
        for name in ("a_expand", "a_reduce"):
            moments[name][-1] = moments[name][-1] / share
    rest_diag = tuple(take(shape) for shape in spec.rest_shapes)
    if off != total.shape[1] - 2:
        raise ConfigError(
            f"layer statistics: {total.shape[1]} packed values, the model's layers need {off + 2}"
        )
    return LayerStatistics(
        kernels=tuple("/".join(layer.kernel) for layer in spec.layers),
        biases=tuple("/".join(layer.bias) if layer.bias else "" for layer in spec.layers),
        rows=np.stack(rows, axis=1) if rows else np.zeros((k, 0)),
        layer_events=np.stack(events, axis=1) if events else np.zeros((k, 0)),
        rest=tuple("/".join(p) for p in spec.rest),
        rest_diag=rest_diag,
        n_events=int(round(n[0])),
        mean_weight=total[:, -1] / n,
        fisher=fisher,
        **{name: tuple(v) for name, v in moments.items()},
    )


def layer_statistics_totals(
    layout,
    ckpts,
    gs: GraphSet,
    *,
    fisher: str = "true",
    chunk_size: int = 64,
    positions: np.ndarray | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    skip_chunk: Callable[[int], bool] | None = None,
    mesh=None,
) -> np.ndarray | None:
    """The one pass of :func:`layer_statistics`: the float64 ``[K, F]`` sum of the chunk totals
    computed here (None if every chunk was skipped), what :func:`unpack_statistics` turns into
    :class:`LayerStatistics`. ``on_chunk`` / ``skip_chunk``: a store's resume hooks (chunk
    totals, :meth:`hepattr_jax.store.ScoreStore.write_chunk` with ``total=True``; a store sums
    its own chunks, :meth:`~hepattr_jax.store.ScoreStore.sum_totals`)."""
    from hepattr_jax.sharding import replicate

    if len(gs) == 0:
        raise ConfigError("layer statistics: no events")
    check_layerwise(layout, ckpts.params, gs, "margin")
    kernel = layer_statistics_kernel(layout, fisher)
    params = replicate(ckpts.params, mesh)
    return stream_totals(
        layout,
        gs,
        lambda data: kernel(params, data),
        chunk_size=chunk_size,
        positions=positions,
        desc="layer statistics",
        progress=progress,
        on_chunk=on_chunk,
        skip_chunk=skip_chunk,
        mesh=mesh,
    )


def layer_statistics(
    layout, ckpts, gs: GraphSet, *, fisher: str = "true", **kwargs
) -> LayerStatistics:
    """Every dense layer's Kronecker-factor statistics over the events of ``gs`` (or
    ``positions`` into it) at every checkpoint of ``ckpts`` (:class:`hepattr_jax.tracin.
    Checkpoints`), in one pass (see the module docstring).

    Before the pass the captured layers are checked against ``jax.grad`` of the margin on the
    set's largest event (:func:`hepattr_jax.per_example.check_layerwise`). ``kwargs``: those of
    :func:`layer_statistics_totals` (``chunk_size``, ``positions``, ``progress``, ``mesh``, the
    resume hooks)."""
    total = layer_statistics_totals(layout, ckpts, gs, fisher=fisher, **kwargs)
    if total is None:
        raise ConfigError("layer statistics: every chunk was skipped")
    return unpack_statistics(capture_spec(layout, ckpts.at(0), gs), total, fisher)
