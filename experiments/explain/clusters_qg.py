"""Section 7 of the explain report (clusters and embeddings of training events) alone, on a run
of ``experiments/gnn_irst/qg.toml``, timed at 10,000 training events (issue 15, item 4).

Command (from the repository root)::

    hepattr train experiments/gnn_irst/qg.toml --run-dir runs/slim/full_s0 --quiet
    nice -n 15 .venv/bin/python -m experiments.explain.clusters_qg runs/slim/full_s0

Reuses (or computes, resumably) the run's TracIn self-influence store as ``hepattr explain``
does, with the same checkpoint (best epoch) and rule (top 10 %), then calls
:func:`hepattr_jax.explain.cluster_report.clusters_section` exactly as the report does. Writes
``clusters.json``, ``report.md`` (the section's markdown) and the figures to ``OUT``.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from hepattr_jax.data.registry import class_names
from hepattr_jax.environment import provenance
from hepattr_jax.evaluation import remove_top_fraction
from hepattr_jax.explain.cluster_report import clusters_section, render_clusters
from hepattr_jax.explain.report import best_checkpoint
from hepattr_jax.io_utils import atomic_write_json, atomic_write_text
from hepattr_jax.runs import load_run
from hepattr_jax.scoring import scored_self_influence


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("experiments/explain/results/qg_clusters"))
    ap.add_argument("--n-events", type=int, default=10_000)
    ap.add_argument("--q", type=float, default=0.1)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run = load_run(args.run_dir)
    k, desc = best_checkpoint(run)
    t0 = time.perf_counter()
    si = scored_self_influence(run, Path(args.run_dir) / "influence" / "self_influence_train")
    t_si = time.perf_counter() - t0
    keep = remove_top_fraction(si.total, args.q)
    cnames = class_names(run.config.dataset, run.config.dataset_kwargs)
    t0 = time.perf_counter()
    c = clusters_section(
        run.model,
        run.checkpoints.at(k),
        run.checkpoints.select([k]),
        run.data.train,
        si.total,
        keep,
        args.out,
        n_events=args.n_events,
        seed=0,
        class_names=cnames,
    )
    total = time.perf_counter() - t0
    meta = {
        "date": datetime.date.today().isoformat(),
        "command": "nice -n 15 .venv/bin/python -m experiments.explain.clusters_qg "
        f"{args.run_dir} --n-events {args.n_events}",
        **provenance(),
        "run_dir": str(args.run_dir),
        "checkpoint": desc,
        "q": args.q,
        "self_influence_seconds": t_si,
        "section_seconds": total,
    }
    atomic_write_json(args.out / "clusters.json", {**meta, "clusters": c})
    head = [
        f"# Clusters and embeddings: {run.config.dataset}, {run.config.model}",
        "",
        f"Date {meta['date']}; {meta['hardware']}, jax {meta['jax']}; run `{args.run_dir}`, "
        f"{desc}; rule: top {args.q:.0%} self-influence. Command: `{meta['command']}`. "
        f"Section time {total:.0f} s at {c.get('n_events')} events (self-influence store: "
        f"{t_si:.0f} s, computed once per run and shared with section 6).",
    ]
    atomic_write_text(args.out / "report.md", "\n".join(head + render_clusters(c, cnames)) + "\n")
    print(f"section: {total:.1f} s; report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
