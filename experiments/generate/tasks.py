"""Every other generated task beside its single-quantity baselines (issue 12 item 4).

Command (from the repository root; resumable, every stage kept)::

    .venv/bin/python -m experiments.generate.tasks [--task qg --task wh_ttbar --task susy_2l]

For each task: ``hepattr generate TASK --n 10000 --seed 0`` into ``--data/TASK_10k`` when it
holds no finished generation; one training run of the task's config (:data:`TASKS`: ParticleNet
on the quark/gluon jets, EdgeConv on fully connected event graphs for ``wh_ttbar`` and
``susy_2l``); its test scores beside the task's baselines (:func:`hepattr_jax.baselines.compare`:
AUROC and 1/eps_B with paired 95 % bootstrap intervals over test events). The top/QCD task has
its own driver (``particlenet.py``). Writes ``results/tasks/tasks.json`` and
``results/tasks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np

from hepattr_jax.baselines import compare
from hepattr_jax.config import load_config
from hepattr_jax.data.generate import ensure_generated
from hepattr_jax.environment import provenance
from hepattr_jax.errors import DataError
from hepattr_jax.io_utils import atomic_write_json, atomic_write_text

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "tasks"
N, SEED = 10_000, 0
#: task -> (config, what)
TASKS = {
    "qg": (HERE / "qg_particlenet.toml", "quark vs gluon jets (Z + jet), ParticleNet-like"),
    "wh_ttbar": (HERE / "wh_ttbar_edgeconv.toml", "WH (b b-bar, l nu) vs t t-bar, EdgeConv"),
    "susy_2l": (HERE / "susy_2l_edgeconv.toml", "chargino pairs vs WW (2 leptons), EdgeConv"),
}


def run_task(task: str, data_root: Path, runs: Path, out: Path, n: int = N) -> dict:
    path = out / f"{task}.json"
    if path.exists():
        return json.loads(path.read_text())
    from hepattr_jax.runs import load_run
    from hepattr_jax.train import train

    config_path, what = TASKS[task]
    data = data_root / f"{task}_{n // 1000}k" if n % 1000 == 0 else data_root / f"{task}_{n}"
    t0 = time.perf_counter()
    ensure_generated(task, n, data, seed=SEED, workers=os.cpu_count() or 1)
    gen_seconds = time.perf_counter() - t0
    config = load_config(config_path)
    config = config.replace(dataset_kwargs={**config.dataset_kwargs, "path": str(data)})
    t0 = time.perf_counter()
    m = train(config, runs / task, progress=False)
    train_seconds = time.perf_counter() - t0
    run = load_run(runs / task)
    z = np.load(runs / task / "predictions_test.npz")
    test = run.data.test.events
    if not np.array_equal(z["ids"], test.ids):
        raise DataError(f"{runs / task}/predictions_test.npz: ids differ from the test split")
    res = {
        "task": task,
        "what": what,
        "config": str(config_path.relative_to(HERE.parents[1])),
        "generation": {"n": n, "seed": SEED, "seconds_this_call": gen_seconds},
        "model": config.model,
        "n_params": m["n_params"],
        "n_train": m["n_train"],
        "train_seconds": train_seconds,
        "comparison": compare(task, test.physics, test.labels, z["logits"], config.model),
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    atomic_write_json(path, res)
    return res


def report(results: dict, header: dict) -> str:
    L = [
        "# The other generated tasks beside their single-quantity baselines",
        "",
        f"Command: `{header['command']}` ({header['date']}; {header['hardware']}; jax "
        f"{header['jax']}). {header['n']:,} events per task (`hepattr generate TASK --n "
        f"{header['n']} --seed {SEED}`), split 70/15/15 (seed 0), one training seed (0). "
        "Intervals: 95 % percentile bootstrap over test events (1,000 resamples); the pairs "
        "are bootstrapped on the same resamples. Rejection: 1/eps_B at eps_S = 0.5.",
    ]
    for task, r in results.items():
        c = r["comparison"]
        L += [
            "",
            f"## {task}: {r['what']}",
            "",
            f"`{r['config']}`: {r['n_params']:,} parameters, {r['n_train']:,} training events, "
            f"{r['train_seconds']:.0f} s of training; {c['n']:,} test events.",
            "",
            "| discriminant | AUROC [95 %] | 1/eps_B [95 %] | vs model: AUROC difference "
            "[95 %] | resamples with the model better (AUROC / rejection) |",
            "|---|---|---|---|---|",
        ]
        rows = c["rows"]
        for name in [r["model"], *sorted(k for k in rows if k != r["model"])]:
            row = rows[name]
            v = c["vs"].get(name)
            vs = (
                f"[{v['auroc_difference_95'][0]:+.4f}, {v['auroc_difference_95'][1]:+.4f}] | "
                f"{v['share_better_auroc']:.3f} / {v['share_better_rejection']:.3f}"
                if v
                else "- | -"
            )
            L.append(
                f"| {name} | {row['auroc']:.4f} [{row['auroc_95'][0]:.4f}, "
                f"{row['auroc_95'][1]:.4f}] | {row['rejection']:.1f} "
                f"[{row['rejection_95'][0]:.1f}, {row['rejection_95'][1]:.1f}] | {vs} |"
            )
    return "\n".join(L) + "\n"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), action="append")
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--runs", type=Path, default=HERE / "results" / "runs" / "tasks")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--n", type=int, default=N, help="events per task (a smoke run: 200)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.task or list(TASKS):
        r = run_task(task, args.data, args.runs, args.out, args.n)
        print(task, json.dumps(r["comparison"]["rows"], indent=1), flush=True)
    results = {
        t: json.loads((args.out / f"{t}.json").read_text())
        for t in TASKS
        if (args.out / f"{t}.json").exists()
    }
    header = {
        "date": datetime.date.today().isoformat(),
        **provenance(),
        "command": ".venv/bin/python -m experiments.generate.tasks",
        "n": args.n,
    }
    atomic_write_json(args.out / "tasks.json", {**header, "tasks": results})
    path = args.out / "README.md"
    atomic_write_text(path, report(results, header))
    print(f"report: {path.resolve()}")
    return path


if __name__ == "__main__":
    main()
