"""Data sources by name: ``load_dataset("qg_jets" | "susy_sim" | "parquet" | "generated" | "random",
**kwargs)``.

============= ================================================= ====================================
name          function                                          what
============= ================================================= ====================================
``qg_jets``   :func:`~hepattr_jax.data.qg_jets.load_qg_jets`     real quark/gluon jets, track graphs
``susy_sim``  :func:`~hepattr_jax.data.susy_sim.simulate_susy`   simulated chargino vs WW dileptons
``parquet``   :func:`~hepattr_jax.data.parquet.load_parquet`     users' own events in Parquet
``generated`` :func:`~hepattr_jax.data.generate.load_generated`  jets/events of ``hepattr generate``
``random``    :func:`~hepattr_jax.data.synthetic.random_events`  random shapes (tests, benchmarks)
============= ================================================= ====================================
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

from hepattr_jax.data.events import EventSet
from hepattr_jax.data.generate import META_NAME, load_generated
from hepattr_jax.data.parquet import load_parquet
from hepattr_jax.data.qg_jets import load_qg_jets
from hepattr_jax.data.susy_sim import simulate_susy
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import ConfigError

DATASETS: dict[str, Callable[..., EventSet]] = {
    "qg_jets": load_qg_jets,
    "susy_sim": simulate_susy,
    "parquet": load_parquet,
    "generated": load_generated,
    "random": random_events,
}


def dataset_names() -> tuple[str, ...]:
    """The valid dataset names, sorted."""
    return tuple(sorted(DATASETS))


def load_dataset(name: str, **kwargs) -> EventSet:
    """Loads the data source ``name`` with keyword arguments passed to its function.

    Raises:
      ConfigError: an unknown name (the message lists the valid ones), or arguments the source
        does not take (the message lists the ones it does).
    """
    try:
        fn = DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}"
        ) from None
    sig = inspect.signature(fn)
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"dataset {name!r}: {e}; it takes: {', '.join(sig.parameters)}") from None
    return fn(**kwargs)


#: Names of label 0 and label 1 of the built-in sources (a generated set names its own).
CLASS_NAMES: dict[str, tuple[str, str]] = {
    "qg_jets": ("quark", "gluon"),
    "susy_sim": ("WW", "SUSY"),
}


def class_names(dataset: str, dataset_kwargs: dict | None = None) -> tuple[str, str]:
    """``(name of label 0, name of label 1)`` for reports and plots: the built-in sources' from
    :data:`CLASS_NAMES`, a generated set's from its ``generation.json`` (e.g. QCD, top), else
    ``("class 0", "class 1")``."""
    if dataset in CLASS_NAMES:
        return CLASS_NAMES[dataset]
    path = (dataset_kwargs or {}).get("path")
    if dataset == "generated" and path:
        try:
            labels = json.loads((Path(path) / META_NAME).read_text())["labels"]
            return str(labels["0"]), str(labels["1"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # names only: the data loader reports a broken generation
    return ("class 0", "class 1")
