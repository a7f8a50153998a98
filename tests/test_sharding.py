"""Data parallel over events: with 4 (forced CPU) devices, every kernel gives what one device gives.

The device count is fixed when JAX starts, so the 4-device check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it compares the 4-device mesh with no mesh
at all (one device) in the same process, in float64, so any change of summation order would show.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from hepattr_jax.errors import ConfigError

WORKER = textwrap.dedent(
    """
    import jax, numpy as np
    from hepattr_jax import tracin, trak
    from hepattr_jax.data.synthetic import random_events
    from hepattr_jax.graphs import build_graphs
    from hepattr_jax.models import make_model
    from hepattr_jax.per_example import layout_for
    from hepattr_jax.projection import Projector
    from hepattr_jax.sharding import event_mesh

    jax.config.update("jax_enable_x64", True)  # float64: any reordering would show
    assert jax.device_count() == 4, jax.devices()
    sizes = np.array([1, 5, 5, 5, 1, 5, 5, 5, 5, 1, 5, 5, 5, 5])
    gs = build_graphs(random_events(len(sizes), n_nodes=sizes, seed=1, n_globals=2))
    # one EdgeConv block: splitting events over devices is what is checked, not depth
    model = make_model("edgeconv", hidden=8, n_blocks=1, readout_hidden=8, use_globals=True)
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget()))

    @jax.jit  # one compilation, where an eager init compiles each op at each shape
    def init(key):
        return jax.tree_util.tree_map(lambda x: x.astype(np.float64), model.init(key, ex.graphs))

    params = [init(jax.random.key(k)) for k in range(2)]
    ckpts = tracin.Checkpoints.from_list(params, [1e-3, 5e-4])
    proj = Projector(32, seed=3, block_rows=500)
    meshes = (("none", None), ("four", event_mesh()))

    def check(results):
        for a, b in zip(results["none"], results["four"]):
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
        assert np.all(results["none"][0] > 0)

    # dense EdgeConv, every kernel; one bucket of 14 events in chunks of 8: a ragged tail (the
    # padding-minimal plan's two buckets would double the compilations and check nothing more)
    layout = layout_for(model, gs)
    assert len(layout.plan(gs).buckets) == 1
    results = {}
    for name, mesh in meshes:
        si = tracin.self_influence(layout, ckpts, gs, chunk_size=8, mesh=mesh,
                                   progress=False, per_checkpoint=True)
        mat = tracin.influence_matrix(layout, ckpts, gs, gs.select(np.arange(5)),
                                      chunk_size=8, mesh=mesh, progress=False)
        feats, margins = trak.featurize(layout, ckpts, gs, proj, chunk_size=8, mesh=mesh,
                                        progress=False)
        results[name] = (si, mat, feats, margins)
    check(results)
    layout = layout_for(model, gs, prefer_neighbour=False)  # generic GraphsTuple layout
    check({name: (tracin.self_influence(layout, ckpts, gs, chunk_size=8, mesh=mesh,
                                        progress=False),) for name, mesh in meshes})
    print("SHARDED-OK")
    """
)


@pytest.mark.slow  # end-to-end or subprocess: make test runs it, make test-fast not
def test_four_devices_equal_one_device():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "SHARDED-OK" in out.stdout


def test_chunk_size_must_split_evenly_over_devices():
    import jax

    from hepattr_jax.sharding import check_chunk_size, event_mesh, process_chunk_filter

    check_chunk_size(7, event_mesh(jax.devices()[:1]))  # one device: anything goes
    fake = type("M", (), {"size": 4})()
    with pytest.raises(ConfigError, match="multiple of the 4 devices"):
        check_chunk_size(6, fake)
    skip = process_chunk_filter(1, 3)
    assert [i for i in range(8) if not skip(i)] == [1, 4, 7]
    with pytest.raises(ConfigError, match="outside"):
        process_chunk_filter(3, 3)
