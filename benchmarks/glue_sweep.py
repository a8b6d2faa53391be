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

The paper's recipe (PAPER.md §3) on its tables' fourteen tasks: batch 100, 20 epochs on the small sets
(MRPC, CoLA, STS-B, RTE, BoolQ, CB, COPA, WiC) and 3 on the large ones, 500 warm-up steps; a GPU job,
data from the Hub (../shared/data lacks MNLI, QQP, QNLI, MultiRC, ReCoRD, BoolQ and WiC):
    .venv/bin/python benchmarks/glue_sweep.py --paper --model google-t5/t5-base --seeds 42 43 44 --out runs/paper

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
from compacter.tasks import get_task, load_split
from compacter.training import TrainConfig, default_model_path, run_settings, same_setting

#: The tasks of the paper's tables: GLUE, then SuperGLUE.
PAPER_TASKS = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "multirc", "copa", "record", "cb", "boolq", "wic")
#: The paper trains 20 epochs on its small sets (MRPC, CoLA, STS-B, RTE, BoolQ, CB, COPA, WiC) and 3 on these.
PAPER_LARGE_TASKS = ("mnli", "qqp", "qnli", "sst2", "multirc", "record")
PAPER_BATCH_SIZE, PAPER_WARMUP_STEPS = 100, 500
#: Without --paper: eight tasks small enough for CPU runs (docs/RESULTS.md).
DEFAULT_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte", "cb", "copa", "wsc")
DEFAULT_EPOCHS, DEFAULT_BATCH_SIZE = 20, 32


def paper_epochs(task: str) -> int:
    """The paper's epochs for ``task``: 3 for its large sets, 20 for the small ones. Tasks outside
    its tables (WNLI, WSC, SuperGLUE's RTE, demo) are small sets: 20."""
    return 3 if get_task(task).name in PAPER_LARGE_TASKS else 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sweep's flags; --tasks resolved (the paper's tasks under --paper when not given)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or hub name (default: the bundled MiniLM encoder; "
                                                  "--paper does not change it: the paper's is google-t5/t5-base)")
    p.add_argument("--data-dir", default=None, help="benchmark files (default: the HF hub)")
    p.add_argument("--paper", action="store_true",
                   help=f"the paper's recipe: --batch-size {PAPER_BATCH_SIZE}, --warmup-steps {PAPER_WARMUP_STEPS}, "
                        f"3 epochs on {', '.join(PAPER_LARGE_TASKS)} and 20 on every other task, and (without --tasks) "
                        f"the paper's tasks: {' '.join(PAPER_TASKS)}. An explicit --epochs, --batch-size, --warmup-steps "
                        "or --tasks wins over it (--epochs then applies to every task); each run's config.json "
                        "holds the values used")
    p.add_argument("--tasks", nargs="+", default=None,
                   help=f"default: {' '.join(DEFAULT_TASKS)} (with --paper: {' '.join(PAPER_TASKS)})")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + PEER_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--train-samples", type=positive_int, nargs="+", default=None,
                   help="subsample each training set (CPU budgets); several values make a low-resource sweep (Figure 4): "
                        "runs go to OUT/n<budget>/, and a set no larger than a budget is used whole, run once, in OUT/whole/")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"every task's epochs (default: {DEFAULT_EPOCHS}; with --paper: 3 or 20 by task)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"default: {DEFAULT_BATCH_SIZE} (with --paper: {PAPER_BATCH_SIZE})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up steps (default: compacter train's, min(500, 10%% of the steps); "
                        f"with --paper: {PAPER_WARMUP_STEPS})")
    p.add_argument("--max-eval-samples", type=positive_int, default=None)
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply each method's paper learning rate")
    p.add_argument("--adapter", nargs="*", default=[], metavar="KEY=VALUE", help="CompacterConfig overrides for our methods (and AdapterHub's, which share names such as reduction_factor)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="cap optimizer steps per run (CPU budgets)")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args(argv)
    if not args.lr_scale > 0:
        p.error(f"argument --lr-scale: must be positive, got {args.lr_scale}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        p.error(f"argument --warmup-steps: must be 0 or more, got {args.warmup_steps}")
    if args.tasks is None:
        args.tasks = list(PAPER_TASKS if args.paper else DEFAULT_TASKS)
    if args.paper:
        for task in args.tasks:  # paper_epochs looks each one up: a typo is an error now, not after hours of runs
            try:
                get_task(task)
            except ValueError as err:
                p.error(f"argument --tasks: {err}")
    return args


def run_config(args: argparse.Namespace, folder: Path, task: str, method: str, seed: int, samples: int | None,
               overrides: dict) -> TrainConfig:
    """One run's TrainConfig: explicit flags first, then --paper's recipe, then the sweep's defaults;
    epochs, batch size and (under --paper) warm-up are written out, so config.json states them."""
    paper = args.paper
    epochs = args.epochs or (paper_epochs(task) if paper else DEFAULT_EPOCHS)
    batch_size = args.batch_size or (PAPER_BATCH_SIZE if paper else DEFAULT_BATCH_SIZE)
    warmup = args.warmup_steps if args.warmup_steps is not None else (PAPER_WARMUP_STEPS if paper else None)
    cfg = TrainConfig(model=args.model, task=task, method=method, data_dir=args.data_dir, seed=seed,
                      epochs=epochs, batch_size=batch_size, warmup_steps=warmup, train_samples=samples,
                      max_eval_samples=args.max_eval_samples, output_dir=str(folder / f"{task}-{method}-seed{seed}"),
                      progress=False, eval_before=False, max_steps=args.max_steps,
                      adapter=overrides if method in METHODS or method.startswith("ah-") else {})
    cfg.learning_rate = cfg.lr * args.lr_scale
    return cfg


def check_methods(args: argparse.Namespace, overrides: dict) -> None:
    """Before any run: every one of our methods can be placed on the model (built from its config on
    the meta device; e.g. adapterdrop, which drops 5 layers of each stack, cannot on 5 or fewer)."""
    from compacter.params import count_methods

    try:
        count_methods(args.model or default_model_path(), [m for m in args.methods if m in METHODS], overrides)
    except ValueError as err:
        raise SystemExit(f"--methods: {err}") from None


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    overrides = parse_key_values(args.adapter)  # the same KEY=VALUE parsing as `compacter train --adapter`
    check_methods(args, overrides)
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
        cfg = run_config(args, folder, task, method, seed, samples, overrides)
        run = cfg.run_dir()
        if (run / "results.json").exists():  # finished earlier: resume the sweep, if it is this sweep
            done = json.loads((run / "config.json").read_text())  # older versions: relative paths, resume, progress
            changed = sorted(k for k, v in run_settings(cfg).items() if not same_setting(k, done.get(k), v))
            if changed:
                raise SystemExit(f"{run} already holds a finished run with other settings "
                                 f"({', '.join(f'{k}: {done.get(k)!r} there' for k in changed)}); use another --out")
            continue
        run.parent.mkdir(parents=True, exist_ok=True)
        config_file = run.with_name(run.name + ".json")
        config_file.write_text(json.dumps(run_settings(cfg), indent=2) + "\n")
        start = time.perf_counter()
        with open(run.with_name(run.name + ".log"), "w") as log:
            code = subprocess.call([sys.executable, "-m", "compacter", "train", "--config", str(config_file), "--no-progress"],
                                   stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        if code != 0:
            raise SystemExit(f"run {run} failed (exit {code}); its output is in {run}.log")
        results = json.loads((run / "results.json").read_text())
        print(json.dumps({"task": task, "method": method, "seed": seed, "test": results["test"]["score"],
                          "seconds": round(time.perf_counter() - start, 1),
                          "peak_rss_gib": round((results.get("peak_rss_bytes") or 0) / 2**30, 2)}), flush=True)


if __name__ == "__main__":
    main()
