"""Per-layer capture: each dense layer's per-event inputs and output gradients, for any flax model.

A *site* is one application of a dense kernel inside one event's forward pass: every call of an
``nn.Dense`` module (found with ``nn.intercept_methods``, so any user's module works unchanged)
and every direct use of a Dense kernel routed through :func:`kernel_rows` (the built-in models'
per-node factorisation multiplies a kernel block directly). At site ``s`` the event's rows
``a_t`` (``[T_s, r_s]``: the input, leading axes flattened; ``r_s`` kernel rows ``rows_s``) meet
the kernel, and ``delta_t = d loss / d y_t`` (``[T_s, p]``) is the gradient at its output. The
event's gradient of the layer (kernel rows, then the bias as one more row) is exactly

    G = sum_s  embed_{rows_s}(A_s^T D_s)  (+ bias row  sum_t delta_t  for a Dense call)

because the event is one example of the per-event layouts of :mod:`hepattr_jax.per_example`
(``vmap`` over events): every row of a site belongs to that event's graph, padding rows
included, whose ``delta`` is zero. Peers that take the leading axis of a layer's input as the
example (a node or an edge on a graph batch) get this wrong on graphs; here the sum over a
graph's rows is the per-graph gradient by construction.

One forward and backward pass per event yields ``(A_s, D_s)`` for every site (``D_s`` as the
gradient of a zero *perturbation* added to the site's output, the mechanism of flax's
``Module.perturb``), the value, and the ordinary gradient of every parameter that no site
covers (LayerNorm scales, tokens, a user's non-Dense layers): the *rest*. The kernels and biases
the sites cover are not differentiated directly, so the per-event ``[r, p]`` products are never
formed unless a consumer asks for them. A covered kernel that is also used *outside* its sites
would lose that part of its gradient: :func:`check_capture` compares against ``jax.grad`` on a
real event and names the parameter (every capture-based method runs it once per layout and
output in a process: :func:`hepattr_jax.per_example.check_layerwise`).

Consumers (all per event, batched with ``vmap``):

* :func:`grads_from_capture`: the full gradient tree (the reference the tests compare with);
* :func:`sq_norm_from_capture`: ``||grad||^2`` layer by layer, each layer by the *ghost norm*
  ``<A A^T, D D^T>`` (cost ``~T^2 (r + p)``) or the materialised product (``~T r p``), chosen at
  trace time by :func:`layer_plan`;
* the Kronecker-structured projection of :mod:`hepattr_jax.projection`;
* :func:`layer_moments` / :func:`chunk_layer_moments`: each layer's input and output-gradient
  second moments weighted per graph, the K-FAC/EK-FAC statistics of :mod:`hepattr_jax.kfac`
  (a layer's rows in an event: those that carry gradient, so padding never enters).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hepattr_jax.errors import ConfigError

Params = Any
Path = tuple[str, ...]


class Site(NamedTuple):
    """One dense-kernel application (static; found by tracing one event).

    ``kernel``/``bias``: paths of the parameters in the variables tree (``bias`` None when the
    site adds none); ``rows``: the kernel rows ``[start, stop)`` it multiplies; ``n_rows``: the
    event's rows ``T`` (leading axes of the input flattened); ``p``: output width; ``dtype``
    of the output.
    """

    kernel: Path
    bias: Path | None
    rows: tuple[int, int]
    n_rows: int
    p: int
    dtype: str


class Layer(NamedTuple):
    """A kernel (``[d_in, p]``) and its bias with every site that uses them; ``size`` is the
    number of gradient entries ``(d_in + has_bias) * p``."""

    kernel: Path
    bias: Path | None
    d_in: int
    p: int
    sites: tuple[int, ...]

    @property
    def m(self) -> int:
        """Rows of the layer's gradient matrix: kernel rows plus one for the bias."""
        return self.d_in + (self.bias is not None)

    @property
    def size(self) -> int:
        return self.m * self.p


@dataclasses.dataclass(frozen=True)
class CaptureSpec:
    """What one event's forward pass does with dense kernels (static, per bucket shape).

    ``sites`` in call order; ``layers`` grouping them by kernel (first-use order); ``rest`` the
    paths of the parameter leaves no site covers, in ``jax.tree_util`` order.
    """

    sites: tuple[Site, ...]
    layers: tuple[Layer, ...]
    rest: tuple[Path, ...]
    rest_shapes: tuple[tuple[int, ...], ...]


class Capture(NamedTuple):
    """One event's capture (a chunk adds a leading axis ``C`` to every array).

    Attributes:
      value: ``[]`` the differentiated function's value (loss or margin).
      inputs: per site ``A_s`` ``[T_s, r_s]``.
      deltas: per site ``D_s`` ``[T_s, p]``.
      rest: per uncovered leaf (``spec.rest`` order) its ordinary gradient.
    """

    value: jax.Array
    inputs: tuple[jax.Array, ...]
    deltas: tuple[jax.Array, ...]
    rest: tuple[jax.Array, ...]


# --------------------------------------------------------------------- the tracing hooks
class _State:
    """The capture in progress (tracing is single-threaded; nested captures are refused)."""

    def __init__(self, perts: tuple | None, expected: tuple[Site, ...] | None):
        self.perts = perts
        self.expected = expected
        self.sites: list[Site] = []
        self.inputs: list[jax.Array] = []

    def site(self, kernel: Path, bias: Path | None, rows: tuple[int, int], x, y):
        x = jnp.asarray(x)
        a = x.reshape(-1, x.shape[-1]).astype(y.dtype)
        s = Site(kernel, bias, rows, a.shape[0], y.shape[-1], str(y.dtype))
        i = len(self.sites)
        if self.expected is not None and (i >= len(self.expected) or self.expected[i] != s):
            want = self.expected[i] if i < len(self.expected) else "no more sites"
            raise ConfigError(
                f"capture: site {i} of the forward pass is {s}, its discovery pass saw {want}; "
                "the model's dense calls must not depend on the values of its inputs"
            )
        self.sites.append(s)
        self.inputs.append(a)
        if self.perts is not None:
            y = y + self.perts[i].reshape(y.shape)
        return y


_ACTIVE: list[_State] = []


def _path(module: nn.Module) -> Path:
    scope = module.scope
    if scope is None:
        raise ConfigError(f"capture: {type(module).__name__} is not bound to parameters")
    return ("params", *scope.path)


def _dense_interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if not _ACTIVE or context.method_name != "__call__" or not isinstance(mod, nn.Dense):
        return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["inputs"]
    y = next_fun(*args, **kwargs)
    path = _path(mod)
    bias = (*path, "bias") if mod.use_bias else None
    return _ACTIVE[-1].site((*path, "kernel"), bias, (0, jnp.shape(x)[-1]), x, y)


def kernel_rows(dense: nn.Dense, x, start: int, stop: int | None = None) -> jax.Array:
    """``x @ kernel[start:stop]`` of a bound ``nn.Dense``: a direct use of its kernel (no bias)
    that per-layer capture sees as one more site of the layer. Write a model's direct kernel
    uses with this (the built-in models' factorised edge layers do)."""
    kernel = dense.variables["params"]["kernel"]
    stop = kernel.shape[0] if stop is None else stop
    y = jnp.asarray(x) @ kernel[start:stop]
    if not _ACTIVE:
        return y
    return _ACTIVE[-1].site((*_path(dense), "kernel"), None, (start, stop), x, y)


@contextlib.contextmanager
def _capturing(state: _State) -> Iterator[_State]:
    if _ACTIVE:
        raise ConfigError("capture: a capture is already being traced (nested captures)")
    _ACTIVE.append(state)
    try:
        with nn.intercept_methods(_dense_interceptor):
            yield state
    finally:
        _ACTIVE.pop()


# --------------------------------------------------------------------- spec and capture
def _leaves(params) -> tuple[list[Path], list[jax.Array], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp) for kp, _ in flat]
    return paths, [v for _, v in flat], treedef


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def discover(fn_one: Callable, params: Params, ex) -> CaptureSpec:
    """The :class:`CaptureSpec` of ``fn_one(params, ex)`` for one event (abstract trace: no
    computation; ``params`` and ``ex`` may be arrays, tracers or shape structs)."""
    state = _State(None, None)
    with _capturing(state):
        # A fresh function object: jax caches traces by function, and a cached trace would
        # record no sites.
        jax.eval_shape(lambda p, e: fn_one(p, e), _abstract(params), _abstract(ex))
    paths, leaves, _ = _leaves(params)
    shapes = {p: tuple(jnp.shape(v)) for p, v in zip(paths, leaves, strict=True)}
    layers: dict[Path, list] = {}
    for i, s in enumerate(state.sites):
        if s.kernel not in shapes:
            raise ConfigError(f"capture: site kernel {'/'.join(s.kernel)} is not a parameter")
        d_in, p = shapes[s.kernel]
        entry = layers.setdefault(s.kernel, [None, d_in, p, []])
        if s.bias is not None:
            if entry[0] not in (None, s.bias):
                raise ConfigError(f"capture: kernel {'/'.join(s.kernel)} with two biases")
            entry[0] = s.bias
        entry[3].append(i)
    covered = set(layers) | {e[0] for e in layers.values() if e[0] is not None}
    rest = tuple(p for p in paths if p not in covered)
    return CaptureSpec(
        sites=tuple(state.sites),
        layers=tuple(Layer(k, b, d, p, tuple(ix)) for k, (b, d, p, ix) in layers.items()),
        rest=rest,
        rest_shapes=tuple(shapes[p] for p in rest),
    )


def capture_one(fn_one: Callable, spec: CaptureSpec, params: Params, ex) -> Capture:
    """One event's :class:`Capture` of ``fn_one(params, ex)`` (write for one event; batch with
    ``jax.vmap`` over ``ex``). ``spec`` from :func:`discover` on the same shapes."""
    paths, leaves, treedef = _leaves(params)
    rest_set = set(spec.rest)
    rest_idx = [i for i, p in enumerate(paths) if p in rest_set]
    perts = tuple(jnp.zeros((s.n_rows, s.p), s.dtype) for s in spec.sites)

    def f(rest_leaves, perts):
        full = list(leaves)
        for i, v in zip(rest_idx, rest_leaves, strict=True):
            full[i] = v
        state = _State(perts, spec.sites)
        with _capturing(state):
            value = fn_one(jax.tree_util.tree_unflatten(treedef, full), ex)
        if len(state.sites) != len(spec.sites):
            raise ConfigError(
                f"capture: the forward pass made {len(state.sites)} dense calls, its discovery "
                f"pass {len(spec.sites)}"
            )
        return value, tuple(state.inputs)

    rest0 = [leaves[i] for i in rest_idx]
    (value, inputs), (g_rest, deltas) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        rest0, perts
    )
    return Capture(value, inputs, tuple(deltas), tuple(g_rest))


# --------------------------------------------------------------------- consumers
def layer_grad(spec: CaptureSpec, layer: Layer, cap: Capture) -> jax.Array:
    """The layer's ``[m, p]`` gradient (kernel rows, then the bias row), materialised."""
    g = jnp.zeros((layer.m, layer.p), cap.deltas[layer.sites[0]].dtype)
    for i in layer.sites:
        s = spec.sites[i]
        a, d = cap.inputs[i], cap.deltas[i]
        g = g.at[s.rows[0] : s.rows[1]].add(a.T @ d)
        if s.bias is not None:
            g = g.at[layer.d_in].add(d.sum(0))
    return g


def grads_from_capture(spec: CaptureSpec, params: Params, cap: Capture) -> Params:
    """The full gradient tree, shaped like ``params``, from one event's capture."""
    paths, leaves, treedef = _leaves(params)
    out = {p: jnp.zeros_like(v) for p, v in zip(paths, leaves, strict=True)}
    for layer in spec.layers:
        g = layer_grad(spec, layer, cap)
        out[layer.kernel] = g[: layer.d_in].astype(out[layer.kernel].dtype)
        if layer.bias is not None:
            out[layer.bias] = g[layer.d_in].astype(out[layer.bias].dtype)
    for p, g in zip(spec.rest, cap.rest, strict=True):
        out[p] = g
    return jax.tree_util.tree_unflatten(treedef, [out[p] for p in paths])


class LayerChoice(NamedTuple):
    """How :func:`sq_norm_from_capture` takes one layer's squared norm, and why."""

    kernel: Path
    rows: int  # T, summed over the layer's sites
    m: int
    p: int
    ghost_cost: int  # multiply-adds of the Gram route, sum over site pairs T_s T_s' (r + p + 1)
    dense_cost: int  # multiply-adds of forming the [m, p] product: sum_s T_s (r_s + 1) p
    ghost: bool


def layer_plan(spec: CaptureSpec, ghost: bool | None = None) -> tuple[LayerChoice, ...]:
    """Per layer, ghost norm or materialised product: ``ghost=None`` picks the cheaper by the
    multiply-add counts above (the trace-time choice); True / False force one route."""
    out = []
    for layer in spec.layers:
        sites = [spec.sites[i] for i in layer.sites]
        dense = sum(s.n_rows * (s.rows[1] - s.rows[0] + 1) * s.p for s in sites)
        g = 0
        for s in sites:
            for t in sites:
                overlap = max(0, min(s.rows[1], t.rows[1]) - max(s.rows[0], t.rows[0]))
                g += s.n_rows * t.n_rows * (overlap + s.p + 1)
        use = (g < dense) if ghost is None else ghost
        rows = sum(s.n_rows for s in sites)
        out.append(LayerChoice(layer.kernel, rows, layer.m, layer.p, g, dense, bool(use)))
    return tuple(out)


def layer_sq_norm(spec: CaptureSpec, layer: Layer, cap: Capture, ghost: bool) -> jax.Array:
    """``||G_l||^2`` of one layer: by the Gram route ``<A A^T, D D^T>`` summed over site pairs
    (``ghost``), else from the materialised ``[m, p]`` product."""
    if not ghost:
        g = layer_grad(spec, layer, cap)
        return jnp.vdot(g, g)
    total = jnp.zeros((), cap.deltas[layer.sites[0]].dtype)
    for i in layer.sites:
        for j in layer.sites:
            s, t = spec.sites[i], spec.sites[j]
            lo, hi = max(s.rows[0], t.rows[0]), min(s.rows[1], t.rows[1])
            gram_d = cap.deltas[i] @ cap.deltas[j].T  # [T_s, T_t]
            gram_a = jnp.zeros_like(gram_d)
            if hi > lo:
                a_i = cap.inputs[i][:, lo - s.rows[0] : hi - s.rows[0]]
                a_j = cap.inputs[j][:, lo - t.rows[0] : hi - t.rows[0]]
                gram_a = a_i @ a_j.T
            if s.bias is not None and t.bias is not None:
                gram_a = gram_a + 1.0
            total = total + jnp.vdot(gram_a, gram_d)
    return total


def sq_norm_from_capture(spec: CaptureSpec, cap: Capture, ghost: bool | None = None) -> jax.Array:
    """``||grad||^2`` of one event: layer by layer (ghost norm or materialised product, as
    :func:`layer_plan` chooses or ``ghost`` forces) plus the rest's ordinary gradient."""
    total = jnp.asarray(sum(jnp.vdot(g, g) for g in cap.rest), cap.value.dtype)
    for layer, choice in zip(spec.layers, layer_plan(spec, ghost), strict=True):
        total = total + layer_sq_norm(spec, layer, cap, choice.ghost)
    return total


def check_capture(fn_one: Callable, params: Params, ex, rtol: float = 1e-3) -> CaptureSpec:
    """Compares the capture's gradient with ``jax.grad(fn_one)`` on one event; a parameter whose
    gradient differs (a covered kernel used outside its sites, so part of its gradient would be
    lost) is a :class:`~hepattr_jax.errors.ConfigError` naming it. Returns the spec."""
    spec = discover(fn_one, params, ex)

    @jax.jit
    def both(params, ex):
        got = grads_from_capture(spec, params, capture_one(fn_one, spec, params, ex))
        return _leaves(got)[1], _leaves(jax.grad(fn_one)(params, ex))[1]

    g_got, g_want = ([np.asarray(g, np.float64) for g in gs] for gs in both(params, ex))
    paths = _leaves(params)[0]
    scale = float(np.sqrt(sum(np.vdot(g, g) for g in g_want))) + 1e-30
    for p, a, b in zip(paths, g_got, g_want, strict=True):
        err = float(np.linalg.norm(a - b))
        if err > rtol * scale:
            raise ConfigError(
                f"capture: the gradient of parameter {'/'.join(p)} is not reproduced by its "
                f"dense-layer captures (error {err:.3g}, gradient norm {scale:.3g}): the model "
                "uses that kernel outside an nn.Dense call; route the use through "
                "hepattr_jax.capture.kernel_rows, or use a dense projection"
            )
    return spec


# --------------------------------------------------------------------- layer statistics
class LayerMoments(NamedTuple):
    """One event's contribution to a dense layer's Kronecker-factor statistics (see
    :func:`layer_moments`); a chunk adds a leading axis.

    Attributes:
      a_expand: ``[m, m]`` ``(1/T) sum_t a_t a_t^T`` over the event's rows of the layer.
      s_expand: ``[p, p]`` ``c sum_t delta_t delta_t^T``.
      a_reduce: ``[m, m]`` ``abar abar^T`` with ``abar = (1/T) sum_t a_t``.
      s_reduce: ``[p, p]`` ``c dbar dbar^T`` with ``dbar = sum_t delta_t``.
      rows: ``[]`` ``T``, the event's rows of the layer (those that carry gradient).
      has_rows: ``[]`` 1 if ``T > 0``, else 0.
    """

    a_expand: jax.Array
    s_expand: jax.Array
    a_reduce: jax.Array
    s_reduce: jax.Array
    rows: jax.Array
    has_rows: jax.Array


def layer_rows(spec: CaptureSpec, layer: Layer, cap: Capture):
    """The layer's rows in one event, over all its sites: ``(a [T, m], delta [T, p], real [T])``.

    ``a`` is each row's input embedded in the layer's ``m`` gradient rows (its site's kernel rows,
    and 1 in the bias row for a site that adds the bias), so that the event's layer gradient is
    ``a^T delta``. ``real``: the row carries gradient (``delta`` not identically zero), the rows
    the event's layer gradient is made of. Padding rows never do (padding contributes exactly
    zero to the event's output), so padding never enters and the rows are the same in every
    bucket, with no help from the model or the layout. A row of the event with no path to the
    output is left out too: an edge that wins no channel of a max aggregation, a node whose
    ReLUs are all off (matching rows by shape to a layout's node and edge masks was tried
    first: a model's own edge slots, ParticleNet's kNN in feature space, share the static
    slots' shape in one bucket and not in another, and the counts then depended on the
    bucketing).
    """
    a_all, d_all = [], []
    for i in layer.sites:
        s = spec.sites[i]
        a, d = cap.inputs[i], cap.deltas[i]
        emb = jnp.zeros((a.shape[0], layer.m), d.dtype).at[:, s.rows[0] : s.rows[1]].set(a)
        if s.bias is not None:
            emb = emb.at[:, layer.d_in].set(1.0)
        a_all.append(emb)
        d_all.append(d)
    a, d = jnp.concatenate(a_all), jnp.concatenate(d_all)
    return a, d, jnp.any(d != 0, axis=-1)


def layer_moments(spec: CaptureSpec, layer: Layer, cap: Capture, c: jax.Array) -> LayerMoments:
    """One event's moments of a dense layer for its Kronecker factors, from a capture of the
    model's *output* (the logit, or any signed multiple of it: the margin), ``c`` the event's
    Fisher weight (``sigma(z) sigma(-z)`` for the true Fisher of the binary cross-entropy, or
    ``(sigma(z) - y)^2`` for the empirical one; the caller's choice).

    The event's layer gradient is ``G = sum_t a_t delta_t^T`` over its ``T`` rows (nodes, edges,
    or the one pooled row; every site of the layer), so the weighting is per *graph*, never per
    row: ``expand`` treats the rows as ``T`` exchangeable terms, ``A = (1/T) sum_t a a^T`` and
    ``S = c sum_t delta delta^T`` (their product is the event's Fisher block when its rows are
    uncorrelated); ``reduce`` takes the graph as one term, ``A = abar abar^T`` (row mean) and
    ``S = c dbar dbar^T`` (row sum), exact when the rows share one input or one output gradient
    (a layer after pooling: ``T = 1``, where both are the plain K-FAC factors). Eschenhagen et al.
    (NeurIPS 2023) name the two settings. The rows are those that carry gradient
    (:func:`layer_rows`): padding never enters; an event with none (no edges, for an edge layer)
    has ``rows = 0``, zero moments and ``has_rows = 0``, and the K-FAC input factor averages over
    the events with rows (:mod:`hepattr_jax.kfac`)."""
    a, d, real = layer_rows(spec, layer, cap)
    w = real.astype(a.dtype)
    t = w.sum()
    inv = 1.0 / jnp.maximum(t, 1.0)
    aw = a * w[:, None]
    abar = aw.sum(0) * inv
    dbar = d.sum(0)
    return LayerMoments(
        a_expand=(aw.T @ a) * inv,
        s_expand=c * (d.T @ d),
        a_reduce=jnp.outer(abar, abar),
        s_reduce=c * jnp.outer(dbar, dbar),
        rows=t,
        has_rows=(t > 0).astype(a.dtype),
    )


def chunk_layer_moments(
    spec: CaptureSpec, layer: Layer, caps: Capture, c: jax.Array, weight: jax.Array
) -> LayerMoments:
    """``sum_g weight_g * layer_moments(event g)`` over a chunk's captures (leading axis ``C``),
    each sum as one matmul over the chunk's rows ``[C T, m]`` instead of ``C`` per-event
    products (the fast path of :func:`layer_moments`, which the tests compare it with)."""
    a, d, real = jax.vmap(lambda cap: layer_rows(spec, layer, cap))(caps)
    w = real.astype(a.dtype)  # [C, T]
    t = w.sum(1)
    inv = weight / jnp.maximum(t, 1.0)  # [C]
    aw = a * w[..., None]
    abar = aw.sum(1) / jnp.maximum(t, 1.0)[:, None]  # [C, m]
    dbar = d.sum(1)  # [C, p]
    m, p = a.shape[-1], d.shape[-1]
    rows_a = (aw * inv[:, None, None]).reshape(-1, m)
    rows_d = d * (weight * c)[:, None, None]
    return LayerMoments(
        a_expand=rows_a.T @ a.reshape(-1, m),
        s_expand=rows_d.reshape(-1, p).T @ d.reshape(-1, p),
        a_reduce=(abar * weight[:, None]).T @ abar,
        s_reduce=(dbar * (weight * c)[:, None]).T @ dbar,
        rows=weight @ t,
        has_rows=weight @ (t > 0).astype(a.dtype),
    )
