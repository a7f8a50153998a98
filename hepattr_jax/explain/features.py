"""Input features of an :class:`~hepattr_jax.data.events.EventSet`, grouped, masked and permuted.

A *feature* is a column of the node features (``("node", f)``, one value per object) or of the
event-level inputs (``("global", k)``, one value per event). A *group* is a named tuple of
features that an explanation treats as one player (e.g. the three momentum features of a track).

Two perturbations, both on the whole event set at once (vectorised, no loop over events):

* masking (:func:`mask_features`): the features of a group are replaced by a baseline value, by
  default their mean (node features: mean over all objects; event-level inputs: mean over events),
  as in the mean-masking importance of arXiv 2210.04371 and the Shapley value function;
* permutation (:func:`permute_features`): the columns of a group are shuffled jointly (one
  permutation for the whole group, so the group's joint distribution is kept), node features
  across all objects of all events, event-level inputs across events (Breiman 2001).

The event structure (``offsets``, node counts, edges) never changes, so a compiled predictor
(:class:`hepattr_jax.explain.predict.BatchedPredictor`) serves every perturbed copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import ConfigError

Feature = tuple[str, int]  # ("node" | "global", column index)
Groups = dict[str, tuple[Feature, ...]]


class Baseline(NamedTuple):
    """Values that replace masked features: ``node [F]`` and ``globals [G]`` (float32)."""

    node: np.ndarray
    globals: np.ndarray


def feature_means(events: EventSet) -> Baseline:
    """Mean of each node feature over all objects and of each event-level input over events."""
    node = (
        events.nodes.mean(0, dtype=np.float64) if len(events.nodes) else np.zeros(events.n_features)
    )
    glob = events.globals.mean(0, dtype=np.float64) if len(events) else np.zeros(events.n_globals)
    return Baseline(node.astype(np.float32), glob.astype(np.float32))


def feature_names(events: EventSet) -> list[str]:
    """Names of all features: node features first, then event-level inputs."""
    return list(events.node_names) + list(events.global_names)


def resolve_feature(events: EventSet, name: str) -> Feature:
    """The feature called ``name``; ``"node:NAME"`` or ``"global:NAME"`` disambiguates."""
    kind, _, bare = name.rpartition(":")
    kinds = (kind,) if kind else ("node", "global")
    hits = []
    for k in kinds:
        names = events.node_names if k == "node" else events.global_names
        if k not in ("node", "global"):
            raise ConfigError(f"feature {name!r}: prefix must be 'node:' or 'global:'")
        if bare in names:
            hits.append((k, names.index(bare)))
    if not hits:
        raise ConfigError(
            f"unknown feature {name!r}; node features {list(events.node_names)}, "
            f"event-level inputs {list(events.global_names)}"
        )
    if len(hits) > 1:
        raise ConfigError(
            f"feature {name!r} is both a node feature and an event-level input; "
            f"write 'node:{bare}' or 'global:{bare}'"
        )
    return hits[0]


def make_groups(
    events: EventSet,
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    include_globals: bool = True,
) -> Groups:
    """Feature groups by name: ``{group: [feature names]}``, or one group per feature if None.

    Event-level inputs are left out of the default grouping when ``include_globals`` is false
    (a model that does not read them). A feature may belong to at most one group.
    """
    if groups is None:
        out: Groups = {n: (("node", i),) for i, n in enumerate(events.node_names)}
        if include_globals:
            out.update({n: (("global", k),) for k, n in enumerate(events.global_names)})
        if not out:
            raise ConfigError(f"{events.source}: no features to explain")
        return out
    out = {}
    seen: dict[Feature, str] = {}
    for gname, names in groups.items():
        if not names:
            raise ConfigError(f"feature group {gname!r} is empty")
        feats = tuple(resolve_feature(events, n) for n in names)
        for f in feats:
            if f in seen:
                raise ConfigError(
                    f"feature {f[0]}:{_name(events, f)} is in groups {seen[f]!r} and {gname!r}"
                )
            seen[f] = gname
        out[gname] = feats
    if not out:
        raise ConfigError("no feature groups given")
    return out


def _name(events: EventSet, f: Feature) -> str:
    return (events.node_names if f[0] == "node" else events.global_names)[f[1]]


def _split(features: Sequence[Feature]) -> tuple[list[int], list[int]]:
    node = sorted({i for k, i in features if k == "node"})
    glob = sorted({i for k, i in features if k == "global"})
    return node, glob


def mask_features(events: EventSet, features: Sequence[Feature], baseline: Baseline) -> EventSet:
    """A copy of ``events`` with ``features`` set to their ``baseline`` values (structure kept)."""
    node, glob = _split(features)
    nodes, globals_ = events.nodes, events.globals
    if node:
        nodes = nodes.copy()
        nodes[:, node] = baseline.node[node]
    if glob:
        globals_ = globals_.copy()
        globals_[:, glob] = baseline.globals[glob]
    return dataclasses.replace(events, nodes=nodes, globals=globals_)


def permute_features(
    events: EventSet, features: Sequence[Feature], rng: np.random.Generator
) -> EventSet:
    """A copy with the node columns of ``features`` shuffled jointly across all objects and the
    event-level columns shuffled jointly across events (structure kept)."""
    node, glob = _split(features)
    nodes, globals_ = events.nodes, events.globals
    if node:
        nodes = nodes.copy()
        perm = rng.permutation(len(nodes))
        nodes[:, node] = events.nodes[perm][:, node]
    if glob:
        globals_ = globals_.copy()
        perm = rng.permutation(len(events))
        globals_[:, glob] = events.globals[perm][:, glob]
    return dataclasses.replace(events, nodes=nodes, globals=globals_)


def mask_coalition(
    events: EventSet, groups: Groups, present: Sequence[bool], baseline: Baseline
) -> EventSet:
    """Events with every group not ``present`` masked to the baseline (a Shapley coalition)."""
    absent = [
        f for (g, feats), p in zip(groups.items(), present, strict=True) if not p for f in feats
    ]
    return mask_features(events, absent, baseline)
