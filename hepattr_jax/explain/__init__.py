"""Explaining a trained GNN and its data: feature importance (plain, conditional and grouped
permutation), Shapley values, layer-wise relevance propagation, information coverage of the
latent space (per jet and per constituent), neural activation patterns, latent physics, and all
of them split by the events TracIn self-influence keeps and discards (``hepattr explain
RUN_DIR``).

Every estimator takes arrays or a ``predict(events) -> logits [N]`` callable, so each is tested on
cases with a closed-form answer; :class:`BatchedPredictor` is the GNN behind that callable.
"""

from hepattr_jax.explain.activations import (
    activation_patterns,
    correlations,
    pca,
    relative_neural_activation,
)
from hepattr_jax.explain.constituents import constituent_quantities, node_latents
from hepattr_jax.explain.correlated import (
    conditional_permutation_importance,
    correlation_matrix,
    grouped_permutation_importance,
)
from hepattr_jax.explain.coverage import (
    coverage_per_dimension,
    information_coverage,
    kde_goodness_of_fit,
)
from hepattr_jax.explain.features import (
    Baseline,
    feature_means,
    make_groups,
    mask_features,
    permute_features,
)
from hepattr_jax.explain.importance import masking_importance, permutation_importance
from hepattr_jax.explain.lrp import UnsupportedLayerError, lrp, make_rule, relevance
from hepattr_jax.explain.predict import BatchedPredictor, Predictor
from hepattr_jax.explain.report import explain_run
from hepattr_jax.explain.shapley import aggregate_shapley, shapley_values

__all__ = [
    "Baseline",
    "BatchedPredictor",
    "Predictor",
    "activation_patterns",
    "UnsupportedLayerError",
    "aggregate_shapley",
    "conditional_permutation_importance",
    "constituent_quantities",
    "correlation_matrix",
    "correlations",
    "coverage_per_dimension",
    "explain_run",
    "feature_means",
    "grouped_permutation_importance",
    "information_coverage",
    "kde_goodness_of_fit",
    "lrp",
    "make_groups",
    "make_rule",
    "mask_features",
    "masking_importance",
    "node_latents",
    "pca",
    "permutation_importance",
    "permute_features",
    "relative_neural_activation",
    "relevance",
    "shapley_values",
]
