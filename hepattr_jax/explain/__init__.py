"""Explaining a trained GNN and its data: feature importance, Shapley values, information
coverage of the latent space, neural activation patterns, latent physics, and all of them split by
the events TracIn self-influence keeps and discards (``hepattr explain RUN_DIR``).

Every estimator takes arrays or a ``predict(events) -> logits [N]`` callable, so each is tested on
cases with a closed-form answer; :class:`BatchedPredictor` is the GNN behind that callable.
"""

from hepattr_jax.explain.activations import (
    activation_patterns,
    correlations,
    pca,
    relative_neural_activation,
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
from hepattr_jax.explain.predict import BatchedPredictor, Predictor
from hepattr_jax.explain.report import explain_run
from hepattr_jax.explain.shapley import aggregate_shapley, shapley_values

__all__ = [
    "Baseline",
    "BatchedPredictor",
    "Predictor",
    "activation_patterns",
    "aggregate_shapley",
    "correlations",
    "coverage_per_dimension",
    "explain_run",
    "feature_means",
    "information_coverage",
    "kde_goodness_of_fit",
    "make_groups",
    "mask_features",
    "masking_importance",
    "pca",
    "permutation_importance",
    "permute_features",
    "relative_neural_activation",
    "shapley_values",
]
