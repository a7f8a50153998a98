"""hepattr-jax: data attribution (TracIn) for graph neural networks on collision events.

The public surface, by stage (each stage imports only from the ones before it):
events -> graphs -> models -> training + checkpoints -> per-event gradients -> TracIn -> scores.
"""

from hepattr_jax.checkpoints import CheckpointStore
from hepattr_jax.config import TrainConfig, load_config
from hepattr_jax.data.events import EventSet, Normalizer, split_by_id
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.errors import CheckpointError, ConfigError, DataError, HepattrError, StoreError
from hepattr_jax.graphs import Batch, Budget, GraphSet, build_graphs
from hepattr_jax.metrics import auroc, binary_metrics, roc_curve
from hepattr_jax.models import count_params, make_model
from hepattr_jax.per_example import DenseEdgeConvLayout, GraphLayout, layout_for
from hepattr_jax.runs import Run, load_run
from hepattr_jax.store import ScoreStore, scored_self_influence
from hepattr_jax.tracin import (
    Checkpoints,
    TopK,
    influence_matrix,
    self_influence,
    self_influence_reference,
    top_k,
)
from hepattr_jax.train import train

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Budget",
    "CheckpointError",
    "CheckpointStore",
    "Checkpoints",
    "ConfigError",
    "DataError",
    "DenseEdgeConvLayout",
    "EventSet",
    "GraphLayout",
    "GraphSet",
    "HepattrError",
    "Normalizer",
    "Run",
    "ScoreStore",
    "StoreError",
    "TopK",
    "TrainConfig",
    "auroc",
    "binary_metrics",
    "build_graphs",
    "count_params",
    "influence_matrix",
    "layout_for",
    "load_config",
    "load_dataset",
    "load_run",
    "make_model",
    "roc_curve",
    "scored_self_influence",
    "self_influence",
    "self_influence_reference",
    "split_by_id",
    "top_k",
    "train",
]
