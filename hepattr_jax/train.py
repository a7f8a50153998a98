"""Training: data preparation, optimiser and schedule, jitted steps, early stopping, checkpoints.

The run directory written by :func:`train`::

    RUN_DIR/config.json          the TrainConfig (a resumed run must match it)
    RUN_DIR/normalization.json   feature standardisation fitted on the training split
    RUN_DIR/checkpoints/         orbax, one per ``checkpoint_every`` epochs, all kept, each with
                                 step, epoch, learning rate used, config and data fingerprints
    RUN_DIR/history.json         per-epoch train/validation metrics
    RUN_DIR/metrics.json         final validation and test metrics of the best epoch
    RUN_DIR/predictions_test.npz event ids, labels and logits on the test split
    RUN_DIR/loss_curve.png, roc.png

Every file is written atomically, and training resumes from the latest checkpoint: a run killed
after epoch k and restarted ends with the same parameters as an uninterrupted one (the batch order
of epoch e depends only on ``(seed, e)``).

Nothing is written before every check has passed (the config against ``config.json``, the data:
no empty or one-class split, the data fingerprint against the checkpoints), so a refused run
leaves its directory as it was. An epoch whose training or validation loss is not finite is
recorded in ``history.json`` with ``"diverged": true`` (its state is not checkpointed), training
stops, and ``metrics.json`` reports the best checkpoint before it with ``diverged_epoch``; if
no checkpoint precedes it, :class:`~hepattr_jax.errors.ConfigError` says so.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NotRequired, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from hepattr_jax import metrics as metrics_lib
from hepattr_jax.checkpoints import CheckpointStore
from hepattr_jax.config import TrainConfig, load_run_config
from hepattr_jax.data.events import EventSet, Normalizer, split_by_id
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.errors import CheckpointError, ConfigError, DataError
from hepattr_jax.graph_ops import recording_knn_rows
from hepattr_jax.graphs import Batch, Budget, GraphSet, build_graphs
from hepattr_jax.io_utils import atomic_write_json, atomic_write_npz, ensure_dir
from hepattr_jax.losses import mean_loss, per_graph_loss
from hepattr_jax.models import make_model
from hepattr_jax.per_example import (
    NeighbourExample,
    neighbour_mean_loss,
    neighbour_stack,
    supports_neighbour_graphs,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Normalised train/val/test graphs and what made them."""

    train: GraphSet
    val: GraphSet
    test: GraphSet
    normalizer: Normalizer
    fingerprint: str  # of the raw events, before splitting (and of any training subset)

    def with_train(self, train: GraphSet) -> PreparedData:
        """The same validation/test splits and normalisation with another training set (a
        distilled subset, or relabelled events); the fingerprint then also covers ``train``."""
        fp = hashlib.sha256(f"{self.fingerprint}/{train.events.fingerprint()}".encode())
        return dataclasses.replace(self, train=train, fingerprint=fp.hexdigest()[:16])


def prepare_data(config: TrainConfig, events: EventSet | None = None) -> PreparedData:
    """Loads (or takes) the events, splits by id, fits the normalisation on train, adds edges.

    Edges are built from the raw features (kNN distances in physical eta/phi), then the node and
    event-level features are standardised with the training split's statistics.
    """
    if events is None:
        events = load_dataset(config.dataset, **config.dataset_kwargs)
    splits = split_by_id(events, config.split, seed=config.split_seed)
    for name, part in splits.items():
        if len(part) == 0 and name != "val":  # train() checks more (it needs every split)
            raise ConfigError(f"split {name!r} of {events.source} is empty ({config.split})")
    norm = Normalizer.fit(splits["train"])
    graphs = {}
    for name, part in splits.items():
        gs = build_graphs(part, config.edges)
        graphs[name] = dataclasses.replace(gs, events=norm.apply(gs.events))
    return PreparedData(graphs["train"], graphs["val"], graphs["test"], norm, events.fingerprint())


def check_split(name: str, labels: np.ndarray, source: str, fractions=None) -> None:
    """Refuses a split that training cannot use: empty (no validation loss, so no early stopping
    or best epoch; nothing to train or test on) or of one class only (AUROC undefined, and a
    classifier trained on one class learns nothing). Raises DataError naming split and source."""
    n = len(labels)
    frac = "" if fractions is None else f" with split fractions {list(fractions)}"
    if n == 0:
        raise DataError(f"{source}: the {name} split is empty{frac}; every split needs events")
    n1 = int(np.sum(labels))
    if n1 == 0 or n1 == n:
        raise DataError(
            f"{source}: all {n} events of the {name} split are of class {int(labels[0])}{frac}; "
            "a binary classifier needs both classes in every split"
        )


def batches(
    gs: GraphSet,
    batch_size: int,
    budget: Budget,
    order: np.ndarray | None = None,
    neighbour_shape: tuple[int, int, bool] | None = None,
):
    """Yields padded training batches of ``gs`` (in ``order`` if given, else in stored order):
    GraphsTuple :class:`~hepattr_jax.graphs.Batch` es within ``budget``, or, given
    ``neighbour_shape`` ``(n_node, width, dense)``, ``[batch_size, ...]``
    :class:`~hepattr_jax.per_example.NeighbourExample` stacks of that one shape
    (:func:`neighbour_training_shape`)."""
    order = np.arange(len(gs)) if order is None else order
    for start in range(0, len(order), batch_size):
        pos = order[start : start + batch_size]
        if neighbour_shape is None:
            yield gs.training_batch(pos, budget)
        else:
            n_node, width, dense = neighbour_shape
            yield neighbour_stack(gs, pos, n_node, width, batch_size, dense)


def neighbour_training_shape(model, gs: GraphSet, example: Batch) -> tuple[int, int, bool] | None:
    """The one neighbour-layout shape ``(n_node, width, dense)`` that fits every event of
    ``gs`` when ``model`` builds a dynamic kNN (it then trains on neighbour-layout batches);
    else None (GraphsTuple batches).

    A model written against :mod:`hepattr_jax.graph_ops` that builds a dynamic kNN (ParticleNet,
    DynEdge) compares every pair of a GraphsTuple batch's node slots (``[n, n]`` for ``n`` =
    batch size x largest event); per event it compares the event's own nodes. Measured on 4,096
    jets of 16-96 constituents, kNN-16 edges, batches of 128 (2026-12-07, 2-core CPU): one
    gradient step 101 -> 173 training events/s for ParticleNet and 54 -> 143 for DynEdge; a
    training epoch (validation included) 29.9 -> 15.3 s and 72.0 -> 30.1 s. Edgeconv,
    interaction and gcn run 0.79-0.97x as fast in this layout, so they keep GraphsTuple
    batches; so does ParT (no dynamic kNN), although its step ran 1.14x here. The gradient is
    the same function of the parameters (the same per-event losses averaged over the batch's
    events), up to float rounding and the order of kNN near-ties; validation stays on
    GraphsTuple batches.
    """
    if not supports_neighbour_graphs(model):
        return None
    with recording_knn_rows() as rows:  # a new function: a cached trace would record nothing
        jax.eval_shape(lambda key, g: model.init(key, g), jax.random.key(0), example.graphs)
    if not rows:
        return None
    dense = bool(gs.fully_connected.all())
    n_node = int(gs.events.n_node.max())
    return n_node, n_node if dense else max(int(gs.in_degree_max.max()), 1), dense


# --------------------------------------------------------------------- optimiser
def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per update step: linear warm-up, then constant, cosine or exponential decay."""
    total = max(config.epochs * steps_per_epoch, 1)
    warm = min(config.warmup_epochs * steps_per_epoch, total - 1)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warm else config.lr,
            peak_value=config.lr,
            warmup_steps=warm,
            decay_steps=total,
            end_value=config.lr * 0.01,
        )
    if config.schedule == "exponential":
        decay = optax.exponential_decay(config.lr, max(total - warm, 1), decay_rate=0.01)
    else:
        decay = optax.constant_schedule(config.lr)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warm), decay], [warm])


#: AdamW's moment decay rates and epsilon (optax's defaults, named: Adam-aware TracIn's
#: preconditioner, :mod:`hepattr_jax.adam`, is made of the same second moment and epsilon).
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def make_optimizer(config: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        schedule, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=config.weight_decay
    )


def adam_second_moment(opt_state, where: str = "optimiser state"):
    """Adam's bias-corrected second moment ``v / (1 - b2^t)`` (the parameters' tree, float64
    NumPy) from an optax Adam/AdamW state (its ``nu`` and ``count``).

    Raises:
      CheckpointError: the state has no Adam moments, or no step was taken (``t = 0``).
    """

    def is_adam(x):
        return isinstance(x, optax.ScaleByAdamState)

    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
    if len(found) != 1:
        raise CheckpointError(
            f"{where}: {len(found)} Adam states (ScaleByAdamState: nu, count) in the optimiser "
            "state; Adam-aware TracIn needs exactly one"
        )
    nu, count = found[0].nu, found[0].count
    t = int(np.asarray(count))
    if t < 1:
        raise CheckpointError(
            f"{where}: Adam has taken no step (count 0), so nu is not an estimate"
        )
    scale = 1.0 / (1.0 - ADAM_B2**t)
    return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64) * scale, nu)


# --------------------------------------------------------------------- steps
def make_steps(apply_fn: Callable, tx: optax.GradientTransformation):
    """Jitted ``train_step(state, batch) -> (state, loss)`` and ``eval_step(params, batch)``.

    ``state`` is ``{"params", "opt_state", "step"}``; each compiles once per padding budget.
    The same (hashable) ``apply_fn`` and ``tx`` objects get the same jitted functions back, so
    a retraining with them (:func:`train` reuses its model and optimiser per config) neither
    traces nor compiles its steps again.
    """
    try:
        return _cached_steps(apply_fn, tx)
    except TypeError:  # unhashable (a model with list-valued fields): fresh jitted functions
        return _steps(apply_fn, tx)


def _steps(apply_fn: Callable, tx: optax.GradientTransformation):
    @jax.jit
    def train_step(state, batch: Batch | NeighbourExample):
        loss_fn = neighbour_mean_loss if isinstance(batch, NeighbourExample) else mean_loss
        loss, grads = jax.value_and_grad(partial(loss_fn, apply_fn))(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    return train_step, make_eval_step(apply_fn)


_cached_steps = functools.lru_cache(maxsize=8)(_steps)


def make_eval_step(apply_fn: Callable):
    """Jitted ``eval_step(params, batch) -> (logits, per-graph losses)``."""

    @jax.jit
    def eval_step(params, batch: Batch):
        logits = apply_fn(params, batch.graphs)
        return logits, per_graph_loss(apply_fn, params, batch)

    return eval_step


def evaluate_events(apply_fn: Callable, params, gs: GraphSet, batch_size: int = 256):
    """Logits and losses ``[N]`` (float64) of every event of ``gs`` under ``params``."""
    return predict(make_eval_step(apply_fn), params, gs, batch_size, gs.batch_budget(batch_size))


def predict(eval_step, params, gs: GraphSet, batch_size: int, budget: Budget):
    """Logits and losses of every event of ``gs``, in stored order (float64 NumPy ``[N]``)."""
    logits, losses = [], []
    for batch in batches(gs, batch_size, budget):
        lg, ls = eval_step(params, batch)
        m = np.asarray(batch.graph_mask)
        logits.append(np.asarray(lg)[m])
        losses.append(np.asarray(ls)[m])
    cat = lambda x: np.concatenate(x).astype(np.float64) if x else np.zeros(0)  # noqa: E731
    return cat(logits), cat(losses)


def init_state(config: TrainConfig, model, tx, example: Batch):
    """Fresh ``{"params", "opt_state", "step"}`` (``model.init`` jitted: one compile instead of
    ~100 small eager ones, seconds per process)."""
    try:
        init = _jitted_init(model)
    except TypeError:  # unhashable model
        init = jax.jit(model.init)
    params = init(jax.random.key(config.seed), example.graphs)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    # Committed to its device, as restored checkpoints are: the jitted steps then see one kind
    # of array and compile once, not again for the restored best epoch (or a resumed run).
    return jax.device_put(state, jax.tree_util.tree_leaves(params)[0].sharding)


@functools.lru_cache(maxsize=8)
def _jitted_init(model):
    return jax.jit(model.init)


#: Model, schedule and optimiser of recent trainings by (config, steps per epoch): a retraining
#: with the same settings (a study's removal rules, its mislabel runs) gets the same objects,
#: so :func:`make_steps` and :func:`init_state` hand back the functions already traced and
#: compiled for them (seconds per retraining on a CPU). Nothing in them depends on the data.
_TRAINING_OBJECTS: dict[tuple[str, int], tuple] = {}


def _model_and_optimizer(config: TrainConfig, steps_per_epoch: int):
    # the fingerprint leaves out only patience, which none of the three depends on
    key = (config.fingerprint(), steps_per_epoch)
    if key not in _TRAINING_OBJECTS:
        if len(_TRAINING_OBJECTS) >= 8:
            _TRAINING_OBJECTS.pop(next(iter(_TRAINING_OBJECTS)))
        schedule = make_schedule(config, steps_per_epoch)
        _TRAINING_OBJECTS[key] = (
            model_from_config(config),
            schedule,
            make_optimizer(config, schedule),
        )
    return _TRAINING_OBJECTS[key]


def model_from_config(config: TrainConfig):
    kwargs = dict(config.model_kwargs)
    kwargs.setdefault("use_globals", config.use_globals)
    return make_model(config.model, **kwargs)


# --------------------------------------------------------------------- driver
class _Best(TypedDict):
    """Early-stopping state, saved in each checkpoint's meta (``extra["best"]``)."""

    epoch: int  # the best epoch so far; -1 before the first
    val_loss: float
    bad_epochs: int  # epochs since it without a better validation loss
    stopped: NotRequired[bool]  # early stopping fired


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    events: EventSet | None = None,
    data: PreparedData | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Trains (or resumes) the run in ``run_dir``; returns the final metrics dict.

    The data come from ``config.dataset`` unless ``events`` (raw events, split and normalised
    here) or ``data`` (already prepared, e.g. ``PreparedData.with_train(subset)``) are given.

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is safely on disk
    (tests use it to interrupt a run).
    """
    run_dir = Path(run_dir)
    # Every check first (config, data, existing checkpoints), then the first write: a refused
    # run leaves its directory exactly as it was.
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        if load_run_config(run_dir).fingerprint() != config.fingerprint():
            raise ConfigError(
                f"{run_dir}: holds a run with a different config; use a new run directory"
            )
    data = prepare_data(config, events) if data is None else data
    for name in ("train", "val", "test"):
        source = f"{data.train.events.source} (run {run_dir})"
        check_split(name, getattr(data, name).events.labels, source, config.split)
    budget = data.train.batch_budget(config.batch_size)
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    model, schedule, tx = _model_and_optimizer(config, steps_per_epoch)
    train_step, eval_step = make_steps(model.apply, tx)

    example = data.train.training_batch(np.arange(min(len(data.train), config.batch_size)), budget)
    state = init_state(config, model, tx, example)
    neighbour_shape = neighbour_training_shape(model, data.train, example)
    ckpt_dir = run_dir / "checkpoints"
    history: list[dict] = []
    start_epoch = 0
    best: _Best = {"epoch": -1, "val_loss": np.inf, "bad_epochs": 0}
    store = None
    if ckpt_dir.is_dir():
        store = CheckpointStore(
            ckpt_dir,
            config_fingerprint=config.fingerprint(),
            data_fingerprint=data.fingerprint,
            create=False,
        )
        latest = store.latest_step()
        if latest is not None:  # checks fingerprints and hashes: a changed data set stops here
            state = store.restore(latest, state)
            meta = store.meta(latest)
            history = meta["extra"]["history"]
            best = meta["extra"]["best"]
            start_epoch = meta["epoch"] + 1
            log.info("resuming %s from epoch %d (step %d)", run_dir, start_epoch, latest)

    ensure_dir(run_dir)
    atomic_write_json(cfg_path, config.to_dict())
    data.normalizer.save(run_dir / "normalization.json")
    if store is None:
        store = CheckpointStore(
            ckpt_dir, config_fingerprint=config.fingerprint(), data_fingerprint=data.fingerprint
        )

    stopped = best.get("stopped", False)
    diverged = None
    for epoch in range(start_epoch, config.epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train))
        losses = []
        bar = tqdm(
            batches(data.train, config.batch_size, budget, order, neighbour_shape),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for batch in bar:
            state, loss = train_step(state, batch)
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        val_logits, val_losses = predict(
            eval_step, state["params"], data.val, config.batch_size, budget
        )
        record = {
            "epoch": epoch,
            "step": int(state["step"]),
            "lr": float(schedule(int(state["step"]) - 1)),
            "train_loss": train_loss,
            "val_loss": float(val_losses.mean()) if len(val_losses) else float("nan"),
            "val_auroc": _finite_or_none(_safe_auroc(data.val.events.labels, val_logits)),
            "seconds": time.perf_counter() - t0,
        }
        if not (np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])):
            # Diverged: the parameters are no longer usable. Record the epoch (without saving
            # its state as a checkpoint), stop, and report the best epoch saved before it.
            losses_seen = f"train loss {record['train_loss']}, validation loss {record['val_loss']}"
            record = {k: _finite_or_none(v) for k, v in record.items()}
            record["diverged"] = True
            history.append(record)
            atomic_write_json(run_dir / "history.json", history)
            diverged = record
            log.warning(
                "%s: training diverged in epoch %d (%s); stopping, the best epoch saved before "
                "it is kept",
                run_dir,
                epoch + 1,
                losses_seen,
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
            break
        history.append(record)
        if record["val_loss"] < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": record["val_loss"], "bad_epochs": 0}
        else:
            best = {**best, "bad_epochs": best["bad_epochs"] + 1}
        if config.patience and best["bad_epochs"] >= config.patience:
            best["stopped"] = True
            stopped = True
        if progress:
            tqdm.write(
                f"epoch {epoch + 1:3d}  train loss {train_loss:.4f}  val loss "
                f"{record['val_loss']:.4f}  val AUROC {record['val_auroc'] or float('nan'):.4f}  "
                f"lr {record['lr']:.2e}  {record['seconds']:.1f}s"
            )
        last = epoch == config.epochs - 1 or stopped
        if (epoch + 1) % config.checkpoint_every == 0 or last:
            store.save(
                int(state["step"]),
                state,
                lr=record["lr"],
                epoch=epoch,
                extra={"history": history, "best": best},
            )
        atomic_write_json(run_dir / "history.json", history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    # Evaluate the best saved epoch (or the last state if the best was never checkpointed).
    best_state = state
    best_step = _step_of_epoch(store, best["epoch"])
    if best_step is not None:
        best_state = store.restore(best_step, state)
    elif diverged is not None:
        latest = store.latest_step()
        if latest is None:
            raise ConfigError(
                f"{run_dir}: training diverged in epoch {diverged['epoch'] + 1} before any "
                f"checkpoint was saved ({losses_seen}); lower lr ({config.lr}) or check the "
                "data. The epoch is recorded in history.json"
            )
        best_state = store.restore(latest, state)
    params = best_state["params"]
    val_logits, _ = predict(eval_step, params, data.val, config.batch_size, budget)
    test_logits, test_losses = predict(eval_step, params, data.test, config.batch_size, budget)
    test_labels = data.test.events.labels
    result = {
        "run_dir": str(run_dir),
        "model": config.model,
        "use_globals": config.use_globals,
        "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "diverged_epoch": None if diverged is None else diverged["epoch"],
        "checkpoint_steps": store.steps(),
        "data_fingerprint": data.fingerprint,
        "config_fingerprint": config.fingerprint(),
        "test": {
            **metrics_lib.binary_metrics(test_labels, test_logits),
            "loss": float(test_losses.mean()),
        },
        "val": (
            metrics_lib.binary_metrics(data.val.events.labels, val_logits) if len(data.val) else {}
        ),
    }
    atomic_write_json(run_dir / "metrics.json", result)
    atomic_write_npz(
        run_dir / "predictions_test.npz",
        {"ids": data.test.events.ids, "labels": test_labels, "logits": test_logits},
    )
    _plots(run_dir, history, test_labels, test_logits, data.test.events)
    return result


def _plots(run_dir: Path, history, labels, logits, test_events: EventSet) -> None:
    from hepattr_jax import plotting

    history = [h for h in history if not h.get("diverged")]
    if history:
        plotting.loss_curves(history, run_dir / "loss_curve.png")
    curves = {}
    fpr, tpr, _ = metrics_lib.roc_curve(labels, logits)
    curves["GNN"] = (fpr, tpr, metrics_lib.auroc(labels, logits))
    if "chg_mult" in test_events.physics:
        x = test_events.physics["chg_mult"]
        fpr, tpr, _ = metrics_lib.roc_curve(labels, x)
        curves["charged multiplicity"] = (fpr, tpr, metrics_lib.auroc(labels, x))
    plotting.roc_curves(curves, run_dir / "roc.png", title="test set")


def _finite_or_none(v):
    """JSON-safe value: None for a non-finite float."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


def _safe_auroc(labels, scores) -> float:
    try:
        return float(metrics_lib.auroc(labels, scores))
    except ValueError:
        return float("nan")


def _step_of_epoch(store: CheckpointStore, epoch: int) -> int | None:
    for step in store.steps():
        if store.meta(step)["epoch"] == epoch:
            return step
    return None
