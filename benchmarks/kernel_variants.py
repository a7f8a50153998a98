"""Exact self-influence kernel variants on the ref-edgeconv shapes: how to handle the checkpoint
axis, and what the per-node factorisation of the first EdgeConv layer buys.

Command: ``python -m benchmarks.kernel_variants [--n-events 1024] [--out benchmarks/results]``

Variants (all exact, all checked against the library kernel):

* checkpoint axis: ``lax.scan`` over the stacked checkpoints inside one jitted call (the
  library's choice), a Python loop of K one-checkpoint calls, and ``vmap`` over the K axis;
* first EdgeConv layer: factorised per node, ``h_i (W_a - W_b) + h_j W_b`` (library), against the
  naive per-edge ``[h_i, h_j - h_i] W`` of the flax model.

Writes ``kernel_variants_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.tracin_throughput import (
    device_label,
    environment,
    make_checkpoints,
    time_calls,
)
from hepattr_jax import tracin
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.graphs import build_graphs
from hepattr_jax.models import make_model
from hepattr_jax.per_example import DenseEdgeConvLayout, tree_sq_norm


@dataclasses.dataclass(frozen=True)
class NaiveDenseEdgeConvLayout(DenseEdgeConvLayout):
    """The dense layout without the first-layer factorisation: ``[h_i, h_j - h_i] W`` per edge."""

    def logit(self, params, ex):
        p = params["params"]
        x = ex.nodes
        n = x.shape[0]
        dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
        h = jax.nn.relu(dense("encoder", x))
        off_diag = 1.0 - jnp.eye(n, dtype=x.dtype)
        inv_deg = 1.0 / max(n - 1, 1)
        for b in range(self.n_blocks):
            h_i = jnp.broadcast_to(h[:, None, :], (n, n, h.shape[-1]))
            h_j = jnp.broadcast_to(h[None, :, :], (n, n, h.shape[-1]))
            z = jax.nn.relu(dense(f"edge{b}_0", jnp.concatenate([h_i, h_j - h_i], -1)))
            m = jax.nn.relu(dense(f"edge{b}_1", z))
            h = h + jnp.einsum("ij,ijh->ih", off_diag, m) * inv_deg
        r = jnp.concatenate([h.mean(0), h.max(0)])
        r = jax.nn.relu(dense("readout_0", r))
        return dense("readout_1", r)[0]


def vmap_k_self_influence(layout, ckpts, gs, chunk_size):
    """The K axis by ``vmap`` (all K gradients of a chunk in memory at once)."""
    one = lambda params, ex: tree_sq_norm(jax.grad(layout.loss_one)(params, ex))  # noqa: E731
    kernel = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    lrs = np.asarray(ckpts.lrs)[:, None]
    out = np.zeros(len(gs))
    for chunk in layout.chunks(gs, chunk_size):
        vals = np.asarray(kernel(ckpts.params, chunk.data), np.float64)
        out[chunk.positions] = (lrs * vals).sum(0)[: len(chunk.positions)]
    return out


def loop_k_self_influence(layout, ckpts, gs, chunk_size):
    """The K axis by a Python loop of one-checkpoint calls (each chunk sent K times)."""
    total = np.zeros(len(gs))
    for k in range(len(ckpts)):
        one = dataclasses.replace(
            ckpts,
            params=jax.tree_util.tree_map(lambda x, k=k: x[k : k + 1], ckpts.params),
            lrs=ckpts.lrs[k : k + 1],
        )
        total += tracin.self_influence(layout, one, gs, chunk_size=chunk_size, progress=False)
    return total


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-events", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    gs = build_graphs(random_events(args.n_events, seed=0), "fully_connected")
    model = make_model("edgeconv")
    ckpts = make_checkpoints(model, gs, 5, 1e-3, 0)
    c = args.chunk_size
    dense, naive = DenseEdgeConvLayout(), NaiveDenseEdgeConvLayout()
    variants = {
        "scan over K, factorised (library)": lambda: tracin.self_influence(
            dense, ckpts, gs, chunk_size=c, progress=False
        ),
        "Python loop over K, factorised": lambda: loop_k_self_influence(dense, ckpts, gs, c),
        "vmap over K, factorised": lambda: vmap_k_self_influence(dense, ckpts, gs, c),
        "scan over K, naive first layer": lambda: tracin.self_influence(
            naive, ckpts, gs, chunk_size=c, progress=False
        ),
    }
    res = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "environment": environment(),
        "n_events": len(gs),
        "K": len(ckpts),
        "chunk_size": c,
        "variants": {},
    }
    ref = None
    for name, fn in variants.items():
        out = {}
        t = time_calls(lambda fn=fn, out=out: out.setdefault("v", fn()), args.repeats)
        vals = out["v"]
        ref = vals if ref is None else ref
        res["variants"][name] = {
            **t,
            "events_per_s": len(gs) / t["median_s"],
            "max_rel_diff_vs_library": float(np.max(np.abs(vals - ref) / ref)),
        }
        print(f"{name}: {len(gs) / t['median_s']:.0f} events/s", flush=True)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"kernel_variants_{device_label()}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    env = res["environment"]
    lines = [
        f"# Self-influence kernel variants ({res['date_utc']})",
        "",
        f"{env['device_label']}, jax {env['jax']}; {len(gs)} ref-edgeconv events (4-12 nodes, "
        f"7 features, fully connected, P = 46,081), K = 5, chunk {c}, float32; load average "
        f"{res['loadavg_before']} -> {res['loadavg_after']}. Median of {args.repeats} steady "
        "calls (min-max); the first call (compilation) apart.",
        "",
        "| variant | events/s | steady s | first call s | max rel. diff vs library |",
        "|---|---|---|---|---|",
    ]
    for name, r in res["variants"].items():
        lines.append(
            f"| {name} | {r['events_per_s']:.0f} | {r['median_s']:.2f} "
            f"({r['min_s']:.2f}-{r['max_s']:.2f}) | {r['first_call_s']:.1f} | "
            f"{r['max_rel_diff_vs_library']:.1e} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
