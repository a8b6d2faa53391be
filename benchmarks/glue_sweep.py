"""Quality sweep: methods x tasks x seeds with `compacter train`, then one markdown table.

Each run is an ordinary run directory (config.json, results.json, best/), so any row can be
repeated with `compacter train --config <run>/config.json`. Each run is its own
`python -m compacter train` process (its log in <run>.log), so the peak memory a run reports
is its own. Runs that already have a results.json are skipped, so an interrupted sweep resumes
where it stopped; a run with other settings in the same folder is an error (another --out): the sweep refuses a
finished one, `compacter train` an unfinished one (options a resume may change aside, see training.RESUME_MAY_CHANGE).

Example (the CPU sweep in docs/RESULTS.md):
    .venv/bin/python benchmarks/glue_sweep.py --data-dir ../shared/data --tasks cb copa mrpc rte stsb \
        --methods full adapter pfeiffer adapter-lowrank phm-adapter bitfit compacter compacter++ \
        --train-samples 500 --epochs 3 --out runs/sweep

A low-resource sweep (the paper's Figure 4) gives several budgets, each in its own folder:
    ... --methods full compacter++ --train-samples 100 500 1000 2000 4000 --out runs/lowres
(`compacter report runs/lowres --low-resource-plot figure4.png`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from compacter.cli import parse_key_values, positive_int
from compacter.config import METHODS
from compacter.peers import PEER_METHODS
from compacter.report import report_main
from compacter.tasks import load_split
from compacter.training import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or hub name (default: the bundled MiniLM encoder)")
    p.add_argument("--data-dir", default=None, help="benchmark files (default: the HF hub)")
    p.add_argument("--tasks", nargs="+", default=["cola", "sst2", "mrpc", "stsb", "rte", "cb", "copa", "wsc"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + PEER_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--train-samples", type=positive_int, nargs="+", default=None,
                   help="subsample each training set (CPU budgets); several values make a low-resource sweep (Figure 4): "
                        "runs go to OUT/n<budget>/, and a set no larger than a budget is used whole, run once, in OUT/whole/")
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-eval-samples", type=positive_int, default=None)
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply each method's paper learning rate")
    p.add_argument("--adapter", nargs="*", default=[], metavar="KEY=VALUE", help="CompacterConfig overrides for our methods (and AdapterHub's, which share names such as reduction_factor)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="cap optimizer steps per run (CPU budgets)")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args()
    if not args.lr_scale > 0:
        p.error(f"argument --lr-scale: must be positive, got {args.lr_scale}")
    out = Path(args.out)
    overrides = parse_key_values(args.adapter)  # the same KEY=VALUE parsing as `compacter train --adapter`
    budgets = args.train_samples or [None]
    for seed in args.seeds:
        for task in args.tasks:
            size = len(load_split(task, "train", args.data_dir)) if args.train_samples else None
            for budget in budgets:
                samples = budget if size and size > budget else None  # small sets are used whole
                folder = out if len(budgets) == 1 else out / (f"n{budget}" if samples else "whole")
                _sweep_runs(args, folder, task, seed, samples, overrides)
    plot = str(out / "figure1.png") if importlib.util.find_spec("matplotlib") else None  # optional (compacter[plot])
    print(report_main([str(out)], str(out / "table.md"), plot))


def _sweep_runs(args: argparse.Namespace, folder: Path, task: str, seed: int, samples: int | None, overrides: dict) -> None:
    """Every method on one task, seed and training-set size, in ``folder``; finished runs are skipped
    (a whole set met again at a larger budget among them)."""
    for method in args.methods:
        run = folder / f"{task}-{method}-seed{seed}"
        cfg = TrainConfig(model=args.model, task=task, method=method, data_dir=args.data_dir, seed=seed,
                          epochs=args.epochs, batch_size=args.batch_size, train_samples=samples,
                          max_eval_samples=args.max_eval_samples, output_dir=str(run), progress=False, eval_before=False,
                          max_steps=args.max_steps, adapter=overrides if method in METHODS or method.startswith("ah-") else {})
        cfg.learning_rate = cfg.lr * args.lr_scale
        if (run / "results.json").exists():  # finished earlier: resume the sweep, if it is this sweep
            done = json.loads((run / "config.json").read_text())
            changed = sorted(k for k, v in cfg.to_dict().items() if done.get(k) != v)
            if changed:
                raise SystemExit(f"{run} already holds a finished run with other settings "
                                 f"({', '.join(f'{k}: {done.get(k)!r} there' for k in changed)}); use another --out")
            continue
        run.parent.mkdir(parents=True, exist_ok=True)
        config_file = run.with_name(run.name + ".json")
        config_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        start = time.perf_counter()
        with open(run.with_name(run.name + ".log"), "w") as log:
            code = subprocess.call([sys.executable, "-m", "compacter", "train", "--config", str(config_file)],
                                   stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        if code != 0:
            raise SystemExit(f"run {run} failed (exit {code}); its output is in {run}.log")
        results = json.loads((run / "results.json").read_text())
        print(json.dumps({"task": task, "method": method, "seed": seed, "test": results["test"]["score"],
                          "seconds": round(time.perf_counter() - start, 1),
                          "peak_rss_gib": round((results.get("peak_rss_bytes") or 0) / 2**30, 2)}), flush=True)


if __name__ == "__main__":
    main()
