"""Data parallelism over events across devices, with :mod:`jax.sharding`.

Every attribution kernel is a per-event computation (write it for one event, ``vmap`` it over a
chunk), so the natural split is *data parallel over events*: a chunk of ``C`` events is cut into
``C / D`` events on each of the ``D`` devices of a one-axis :class:`~jax.sharding.Mesh` (axis
``"events"``), while the checkpoints' parameters (and, for train x test, the test gradients) are
replicated on every device. The jitted kernels are unchanged: ``jit`` partitions a computation
whose inputs carry a :class:`~jax.sharding.NamedSharding`, and since no value mixes two events
until the result is copied back to the host, each device computes exactly what one device would
for its events. The results are the same as on one device (tested with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` on CPU).

Use::

    mesh = event_mesh()                      # all local devices
    self_influence(layout, ckpts, gs, chunk_size=64 * mesh.size, mesh=mesh)

Several processes or hosts: see ``docs/multihost.md`` and :mod:`hepattr_jax.shards`. Each
process builds its mesh from its *local* devices and scores only the chunks it owns
(:func:`process_chunk_filter`, or :class:`hepattr_jax.shards.Shard` for the store-level shares).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hepattr_jax.errors import ConfigError

AXIS = "events"


def event_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``("events",)`` over ``devices`` (default: this process's devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ConfigError("event_mesh: no devices")
    return Mesh(np.array(devices), (AXIS,))


def check_chunk_size(chunk_size: int, mesh: Mesh | None) -> None:
    """Chunks are split evenly over the devices: ``chunk_size`` must be a multiple of them."""
    if mesh is not None and chunk_size % mesh.size:
        raise ConfigError(
            f"chunk_size {chunk_size} is not a multiple of the {mesh.size} devices of the mesh; "
            f"use e.g. {mesh.size * max(1, chunk_size // mesh.size)}"
        )


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with every leaf copied to all devices of ``mesh`` (as is when ``mesh`` is None)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_events(tree: Any, mesh: Mesh | None) -> Any:
    """``tree`` with every leaf split along its leading (event) axis over ``mesh``."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(AXIS)))


def process_chunk_filter(
    process_index: int | None = None, process_count: int | None = None
) -> Callable[[int], bool]:
    """``skip(chunk_index)`` for multi-host runs: process ``i`` of ``n`` scores chunks
    ``i, i + n, i + 2n, ...`` and skips the rest (pass it as ``skip_chunk``)."""
    i = jax.process_index() if process_index is None else int(process_index)
    n = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= i < n:
        raise ConfigError(f"process index {i} is outside [0, {n})")
    return lambda chunk_index: chunk_index % n != i
