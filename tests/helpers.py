"""Shared tiny runs and configs for tests (fast: a few hundred small events, a small EdgeConv).

``TINY`` trains in a few seconds on a 2-core CPU; ``tiny_events`` gives its data as an
:class:`~hepattr_jax.data.events.EventSet` so a test can change it (relabel, drop physics).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jax
import numpy as np

from hepattr_jax.config import TrainConfig
from hepattr_jax.data.synthetic import random_events

TINY_KWARGS = {"n_events": 160, "n_node_range": [2, 5], "n_features": 3, "seed": 1}

TINY = TrainConfig(
    dataset="random",
    dataset_kwargs=dict(TINY_KWARGS),
    model="edgeconv",
    model_kwargs={"hidden": 8, "n_blocks": 1, "readout_hidden": 8},
    batch_size=32,
    epochs=2,
    lr=3e-3,
    warmup_epochs=0,
    schedule="constant",
    patience=0,
)

TINY_TOML = """
dataset = "random"
epochs = 2
batch_size = 32
lr = 3e-3
warmup_epochs = 0
schedule = "constant"
patience = 0
[dataset_kwargs]
n_events = 160
n_node_range = [2, 5]
n_features = 3
seed = 1
[model_kwargs]
hidden = 8
n_blocks = 1
readout_hidden = 8
"""


def tiny_events(**overrides):
    """The events of ``TINY`` (``random_events``), with keyword overrides."""
    kw = {**TINY_KWARGS, **overrides}
    n = kw.pop("n_events")
    kw["n_node_range"] = tuple(kw["n_node_range"])
    return random_events(n, **kw)


def snapshot(directory: str | Path) -> dict[str, tuple[bytes, int]]:
    """``{relative path: (bytes, mode)}`` of every file under ``directory`` (to show that a
    refused command wrote nothing)."""
    root = Path(directory)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    return out


def is_root() -> bool:
    """Root ignores file permissions, so chmod-based read-only tests cannot fail for it."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def init_params(model, graph, seeds=(0,), dtype=None) -> list:
    """``model.init(jax.random.key(s), graph)`` for each seed under one ``jax.jit`` (the same
    parameters; eager init compiles every operation on its own, seconds for the jet models),
    each leaf cast to ``dtype`` when given."""
    init = jax.jit(model.init)
    out = [init(jax.random.key(s), graph) for s in seeds]
    if dtype is not None:
        out = [jax.tree_util.tree_map(lambda x: x.astype(dtype), p) for p in out]
    return out


#: Narrow settings of the built-in models for float64 exactness tests: the same code paths as
#: the defaults (residual blocks chained, factorised first edge layers, globals), a third less
#: to compile and far less float64 arithmetic.
SMALL_MODEL = {
    "edgeconv": {"hidden": 16, "n_blocks": 2, "readout_hidden": 16},
    "interaction": {"hidden": 16, "readout_hidden": 16},
    "gcn": {"hidden": 16, "n_layers": 2, "readout_hidden": 16},
}


def numpy_params(model, *args, seed=0, bias_scale=0.0, dtype=np.float64):
    """Parameters of a model of ``nn.Dense`` layers drawn in NumPy: LeCun-normal kernels (the
    scale of flax's default), biases ``bias_scale`` times a standard normal. For checks that
    hold for any parameters: NumPy draws compile nothing, where flax's eager ``init`` compiles
    each initialiser per shape (seconds per model on a CPU)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if "bias" in jax.tree_util.keystr(path):
            return (bias_scale * rng.normal(size=leaf.shape)).astype(dtype)
        return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])).astype(dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
