"""hepattr-jax: data attribution (TracIn, Adam-aware TracIn, gradient cosine, TRAK, EK-FAC influence
functions) for graph neural networks on collision events.

The public surface, by stage (each stage imports only from the ones before it):
events -> graphs -> models -> training + checkpoints -> per-event gradients (+ projections) ->
TracIn / TRAK -> scores -> evaluation (removal, mislabels, LDS) and explanations.
"""

from typing import TYPE_CHECKING

from hepattr_jax.adam import adam_gradient_map
from hepattr_jax.capture import kernel_rows
from hepattr_jax.checkpoints import CheckpointStore
from hepattr_jax.config import TrainConfig, load_config
from hepattr_jax.cosine import cosine_gradient_map
from hepattr_jax.data.events import EventSet, Normalizer, split_by_id
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.datamodels import subset_masks, train_subset_models
from hepattr_jax.ekfac import EKFACFactors, ekfac_checkpoints, ekfac_gradient_map
from hepattr_jax.ekfac import fit as fit_ekfac
from hepattr_jax.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    HepattrError,
    StoreError,
    WriteError,
)
from hepattr_jax.evaluation import lds_interval, linear_datamodeling_score
from hepattr_jax.graph_ops import NeighbourGraph
from hepattr_jax.graphs import Batch, Budget, GraphSet, build_graphs
from hepattr_jax.kfac import LayerStatistics, layer_statistics
from hepattr_jax.metrics import auroc, binary_metrics, roc_curve
from hepattr_jax.models import count_params, make_model
from hepattr_jax.per_example import (
    GradientMap,
    GraphLayout,
    NeighbourLayout,
    layout_for,
    plan_buckets,
)
from hepattr_jax.projection import KroneckerProjector, Projector
from hepattr_jax.runs import Run, load_run
from hepattr_jax.scoring import (
    METHODS,
    scored_ekfac_factors,
    scored_influence_matrix,
    scored_layer_statistics,
    scored_self_influence,
    scored_top_k,
)
from hepattr_jax.sharding import event_mesh
from hepattr_jax.store import ScoreStore
from hepattr_jax.tracin import (
    Checkpoints,
    TopK,
    influence_from_features,
    influence_matrix,
    projected_features,
    self_influence,
    self_influence_from_features,
    self_influence_reference,
    top_k,
)
from hepattr_jax.train import train
from hepattr_jax.trak import featurize, trak_scores, trak_self_influence

if TYPE_CHECKING:
    from hepattr_jax import explain
    from hepattr_jax.explain import explain_run, permutation_importance, shapley_values

__version__ = "0.1.0"

#: Imported on first use: explanations pull in scipy.stats and matplotlib (about a second), which
#: training, attribution and their command lines do not need.
_LAZY_EXPLAIN = ("explain", "explain_run", "permutation_importance", "shapley_values")


def __getattr__(name: str):
    if name in _LAZY_EXPLAIN:
        import importlib

        module = importlib.import_module("hepattr_jax.explain")
        return module if name == "explain" else getattr(module, name)
    raise AttributeError(f"module 'hepattr_jax' has no attribute {name!r}")


__all__ = [
    "Batch",
    "Budget",
    "CheckpointError",
    "CheckpointStore",
    "Checkpoints",
    "ConfigError",
    "DataError",
    "EKFACFactors",
    "EventSet",
    "GradientMap",
    "GraphLayout",
    "GraphSet",
    "HepattrError",
    "KroneckerProjector",
    "LayerStatistics",
    "METHODS",
    "NeighbourGraph",
    "NeighbourLayout",
    "Normalizer",
    "Projector",
    "Run",
    "ScoreStore",
    "StoreError",
    "TopK",
    "TrainConfig",
    "WriteError",
    "adam_gradient_map",
    "auroc",
    "binary_metrics",
    "build_graphs",
    "cosine_gradient_map",
    "count_params",
    "ekfac_checkpoints",
    "ekfac_gradient_map",
    "event_mesh",
    "explain",
    "explain_run",
    "featurize",
    "fit_ekfac",
    "influence_from_features",
    "influence_matrix",
    "kernel_rows",
    "layer_statistics",
    "layout_for",
    "lds_interval",
    "linear_datamodeling_score",
    "load_config",
    "load_dataset",
    "load_run",
    "make_model",
    "permutation_importance",
    "plan_buckets",
    "projected_features",
    "roc_curve",
    "scored_ekfac_factors",
    "scored_influence_matrix",
    "scored_layer_statistics",
    "scored_self_influence",
    "scored_top_k",
    "self_influence",
    "self_influence_from_features",
    "self_influence_reference",
    "shapley_values",
    "split_by_id",
    "subset_masks",
    "top_k",
    "train",
    "train_subset_models",
    "trak_scores",
    "trak_self_influence",
]
