"""The task table: GLUE, SuperGLUE and the demo task, looked up by name; custom tasks."""

from __future__ import annotations

import re
from typing import Sequence

from .base import KINDS, Task
from .formats import format_multirc, format_record, format_wsc

_GLUE_HUB, _SUPERGLUE_HUB = "nyu-mll/glue", "aps/super_glue"
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")


def _glue(name: str, fields: tuple[str, ...], labels: tuple[str, ...] | None, metrics: tuple[str, ...], **kw) -> Task:
    return Task(name, "glue", fields, metrics, label_names=labels, hub=(_GLUE_HUB, name), **kw)


def _superglue(name: str, fields: tuple[str, ...], labels: tuple[str, ...] | None, metrics: tuple[str, ...],
               hub_name: str | None = None, **kw) -> Task:
    hub = (_SUPERGLUE_HUB, hub_name or name)
    return Task(name, "superglue", fields, metrics, label_names=labels, hub=hub, **kw)


_TASKS: tuple[Task, ...] = (
    _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc",)),
    _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    _glue("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman"), kind="regression", target_step=0.2),
    _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",)),
    _glue("qnli", ("question", "sentence"), _NLI2, ("accuracy",)),
    _glue("rte", ("sentence1", "sentence2"), _NLI2, ("accuracy",)),
    _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    _superglue("boolq", ("question", "passage"), _BOOL, ("accuracy",)),
    _superglue("cb", ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"), ("macro_f1", "accuracy")),
    _superglue("copa", ("premise", "choice1", "choice2"), ("choice1", "choice2"), ("accuracy",)),
    _superglue("multirc", ("question", "answer", "paragraph"), _BOOL, ("f1a", "group_em"), formatter=format_multirc),
    _superglue("record", ("query", "entities", "passage"), None, ("token_f1", "exact_match"),
               kind="generation", formatter=format_record),
    _superglue("superglue-rte", ("premise", "hypothesis"), _NLI2, ("accuracy",), hub_name="rte"),
    _superglue("wic", ("sentence1", "sentence2", "word"), _BOOL, ("accuracy",)),
    _superglue("wsc", ("text",), _BOOL, ("accuracy",), hub_name="wsc.fixed", formatter=format_wsc),
    Task("demo", "demo", ("sentence",), ("accuracy",), label_names=("negative", "positive")),
)

TASKS: dict[str, Task] = {task.name: task for task in _TASKS}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
GLUE_TASKS = tuple(t.name for t in _TASKS if t.benchmark == "glue")
SUPERGLUE_TASKS = tuple(t.name for t in _TASKS if t.benchmark == "superglue")

_ALIASES = {"wsc.fixed": "wsc", "superglue-wsc.fixed": "wsc", "mnli-m": "mnli"}
#: names that look like a task but are a split of one: what to use instead
_SPLIT_NAMES = {"mnli-mm": "MNLI-mismatched is a split of 'mnli', not a task of its own: 'mnli' tests on validation_matched "
                           "and validates on validation_mismatched (the paper's protocol), so `compacter evaluate <run>/best "
                           "--split validation` scores a trained mnli adapter on the mismatched set"}


def _canonical(name: str) -> str:
    """Lower-case, '_'/' ' as '-', benchmark prefixes and dashes inside GLUE names dropped."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    key = _ALIASES.get(key, key)
    if key.startswith("glue-"):
        key = key[len("glue-"):]
    elif key.startswith(("superglue-", "super-glue-")) and key != "superglue-rte":
        key = key.split("glue-", 1)[1]
        key = "superglue-rte" if key == "rte" else _ALIASES.get(key, key)
    undashed = key.replace("-", "")
    return undashed if undashed in GLUE_TASKS else key


def get_task(name: str | Task) -> Task:
    """The task called `name` (case-insensitive; aliases like "SST-2", "glue-rte", "wsc.fixed")."""
    if isinstance(name, Task):
        return name
    key = _canonical(name)
    if key in _SPLIT_NAMES:
        raise ValueError(f"task {name!r}: {_SPLIT_NAMES[key]}")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    return TASKS[key]


def _repeated(names: Sequence[str]) -> list[str]:
    """The names that occur more than once in ``names``, in first-seen order."""
    return [n for i, n in enumerate(names) if names.count(n) > 1 and names.index(n) == i]


_DEFAULT_METRICS = {
    "classification": ("accuracy",),
    "regression": ("pearson", "spearman"),
    "generation": ("token_f1", "exact_match"),
}


def custom_task(
    name: str,
    kind: str = "classification",
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    label_names: Sequence[str | int] | None = None,
    metric_names: Sequence[str] | None = None,
) -> Task:
    """A task over the user's own CSV / TSV / JSON-lines files.

    `text_columns` become the source fields in order; `label_column` holds the label.
    Classification needs `label_names`: the label values as the files spell them (class
    id = position; integer ids are accepted too). Regression targets are the value as
    written (`repr(float)`); generation targets the label text itself.
    """
    from .metrics import metric_problems

    problems = []
    if kind not in KINDS:
        problems.append(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "classification" and not label_names:
        problems.append("classification needs label_names (--label-names): the label values as the files spell them, "
                        "e.g. --label-names negative positive (in Python: label_names=['negative', 'positive'])")
    problems += metric_problems(metric_names or (), kind, len(label_names) if label_names else None)
    if isinstance(text_columns, str) or not text_columns:
        problems.append("text_columns must be a non-empty list of column names")
    else:
        if _repeated(text_columns):
            problems.append(f"text_columns (--text-columns) name {_repeated(text_columns)} more than once; name each column once")
        if label_column in text_columns:  # the label would be part of the input the model reads
            problems.append(f"label_column (--label-column) {label_column!r} is also one of the text_columns (--text-columns) "
                            f"{list(text_columns)}: the label would leak into the input; the label column must not be an input")
    if kind == "classification" and label_names and not isinstance(label_names, str) and _repeated([str(n) for n in label_names]):
        problems.append(f"label_names (--label-names) give {_repeated([str(n) for n in label_names])} more than once "
                        f"({[str(n) for n in label_names]}); each label names one class")
    if problems:
        raise ValueError(f"custom task {name!r}: " + "; ".join(problems))
    labels = tuple(str(n) for n in label_names) if kind == "classification" else None
    metrics = tuple(metric_names or _DEFAULT_METRICS[kind])
    return Task(name, "custom", tuple(text_columns), metrics, kind=kind, label_names=labels, label_field=label_column)
