"""Metrics on predicted target strings (PAPER.md §4), all on a 0-100 scale.

The numeric core is scikit-learn / scipy; this module adds what the text-to-text setting
needs: parsing generated strings, counting invalid ones as wrong, grouping (MultiRC
questions, ReCoRD queries) and SQuAD-style answer matching.

Invalid predictions (a string that is not one of the task's target strings):
- accuracy, MultiRC EM: wrong;
- binary F1, MCC, MultiRC F1a: replaced by the opposite of the gold class (the released
  code's `f1_score_with_invalid`), so an invalid prediction is a false negative on a
  positive example and a false positive on a negative one;
- macro-F1 (multi-class): an extra class outside the label set (a miss for the gold class,
  a false positive for none);
- regression: a prediction that does not parse as a finite float scores as
  `UNPARSABLE_REGRESSION_VALUE` (-1.0, the released code's default).
Correlations of a constant prediction (undefined) are 0, as in the released code.
Regression (STS-B) is scored against the unrounded gold scores (`Example.label`), not the
0.2-rounded target strings it trains on; the released code scores against those decoded strings.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .base import KINDS, UNPARSABLE_REGRESSION_VALUE

if TYPE_CHECKING:
    from .base import Example, Task

INVALID = -1  # class id of a prediction that is not a valid target string
_PUNCTUATION = frozenset(string.punctuation)

# --- numeric core (arrays in, float on 0-100 out) -------------------------------------------


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Percentage of equal entries."""
    return 100.0 * float(np.mean(np.asarray(pred) == np.asarray(gold)))


def binary_f1(pred: Sequence[int], gold: Sequence[int]) -> float:
    """F1 of class 1 (0 when there is no true or predicted positive)."""
    return 100.0 * skm.f1_score(gold, pred, pos_label=1, average="binary", zero_division=0)


def macro_f1(pred: Sequence[int], gold: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over classes 0..num_labels-1."""
    labels = list(range(num_labels))
    return 100.0 * skm.f1_score(gold, pred, labels=labels, average="macro", zero_division=0)


def mcc(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation coefficient (x100)."""
    return 100.0 * skm.matthews_corrcoef(gold, pred)


def _correlation(fn: Callable, pred: Sequence[float], gold: Sequence[float]) -> float:
    if len(gold) < 2:  # undefined; scipy's pearsonr raises rather than returning NaN
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = fn(np.asarray(gold, dtype=float), np.asarray(pred, dtype=float))[0]
    return 0.0 if math.isnan(value) else 100.0 * float(value)


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Pearson correlation (x100); 0 when undefined (constant input, fewer than 2 examples)."""
    return _correlation(stats.pearsonr, pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman rank correlation (x100); 0 when undefined (constant input, fewer than 2 examples)."""
    return _correlation(stats.spearmanr, pred, gold)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD token-overlap F1 (0-1) of two strings after normalisation."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


def max_over_answers(fn: Callable[[str, str], float], prediction: str, answers: Sequence[str]) -> float:
    """Best score of `prediction` against any gold answer (0 with no answers)."""
    return max((fn(prediction, a) for a in answers), default=0.0)


def group_mean(values: Sequence[float], groups: Sequence) -> float:
    """Mean over groups of the mean within each group (x100); `None` groups stand alone."""
    per_group: dict = {}
    for i, (value, group) in enumerate(zip(values, groups)):
        per_group.setdefault(("group", group) if group is not None else ("row", i), []).append(value)
    return 100.0 * float(np.mean([np.mean(v) for v in per_group.values()]))


def group_exact_match(correct: Sequence[bool], groups: Sequence) -> float:
    """Percentage of groups whose examples are all correct (MultiRC EM)."""
    per_group: dict = {}
    for i, (ok, group) in enumerate(zip(correct, groups)):
        key = ("group", group) if group is not None else ("row", i)
        per_group[key] = per_group.get(key, True) and bool(ok)
    return 100.0 * float(np.mean(list(per_group.values())))


# --- from predicted strings -------------------------------------------------------------------


def class_ids(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted ids with INVALID for non-label strings, gold ids)."""
    lookup = {text: i for i, text in enumerate(task.label_texts)}
    pred = np.array([lookup.get(p.strip(), INVALID) for p in predictions])
    gold = np.array([lookup[e.target] for e in examples])
    return pred, gold


def _binary_ids(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Class ids with an invalid prediction turned into the opposite of the gold class."""
    pred, gold = class_ids(task, predictions, examples)
    if len(task.label_texts) != 2:
        raise ValueError(f"task {task.name!r} is not binary")
    return np.where(pred == INVALID, 1 - gold, pred), gold


def parse_prediction(text: str) -> float:
    """A generated number, or UNPARSABLE_REGRESSION_VALUE."""
    try:
        value = float(text.strip())
    except ValueError:
        return UNPARSABLE_REGRESSION_VALUE
    return value if math.isfinite(value) else UNPARSABLE_REGRESSION_VALUE


def _scores(predictions: Sequence[str], examples: Sequence[Example]) -> tuple[list[float], list[float]]:
    """Regression: parsed predictions vs the gold scores (unrounded `label`)."""
    return [parse_prediction(p) for p in predictions], [float(e.label) for e in examples]


def _answers(example: Example) -> tuple[str, ...]:
    return example.answers if example.answers is not None else (example.target,)


def _answer_metric(fn: Callable[[str, str], float]) -> Callable:
    def metric(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> float:
        values = [max_over_answers(fn, p, _answers(e)) for p, e in zip(predictions, examples)]
        return group_mean(values, [e.group for e in examples])

    return metric


def _multirc_em(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> float:
    pred, gold = class_ids(task, predictions, examples)
    return group_exact_match(pred == gold, [e.group for e in examples])


TaskMetric = Callable[["Task", Sequence[str], Sequence["Example"]], float]

METRICS: dict[str, TaskMetric] = {
    "accuracy": lambda t, p, e: accuracy(*class_ids(t, p, e)),
    "f1": lambda t, p, e: binary_f1(*_binary_ids(t, p, e)),
    "macro_f1": lambda t, p, e: macro_f1(*class_ids(t, p, e), num_labels=len(t.label_texts)),
    "mcc": lambda t, p, e: mcc(*_binary_ids(t, p, e)),
    "pearson": lambda t, p, e: pearson(*_scores(p, e)),
    "spearman": lambda t, p, e: spearman(*_scores(p, e)),
    "f1a": lambda t, p, e: binary_f1(*_binary_ids(t, p, e)),
    "group_em": _multirc_em,
    "token_f1": _answer_metric(token_f1),
    "exact_match": _answer_metric(exact_match),
}
"""Metric name -> fn(task, predictions, examples). `token_f1`/`exact_match` are
max-over-answers per example, averaged within each group (ReCoRD query), then over groups."""

#: The task kinds each metric can score ("binary": classification with exactly two labels).
METRIC_KINDS: dict[str, tuple[str, ...]] = {
    "accuracy": ("classification",), "macro_f1": ("classification",), "group_em": ("classification",),
    "f1": ("binary",), "mcc": ("binary",), "f1a": ("binary",),
    "pearson": ("regression",), "spearman": ("regression",),
    "token_f1": ("classification", "regression", "generation"),
    "exact_match": ("classification", "regression", "generation"),
}


def metric_problems(metric_names: Sequence[str], kind: str, num_labels: int | None) -> list[str]:
    """Why each of `metric_names` cannot score a task of `kind` with `num_labels` labels (empty: all can).
    Only unknown names are reported for an unknown kind."""
    problems = []
    for name in metric_names:
        if name not in METRICS:
            problems.append(f"unknown metric {name!r}; choose from {sorted(METRICS)}")
            continue
        kinds = METRIC_KINDS[name]
        if kind not in KINDS or kind in kinds or ("binary" in kinds and kind == "classification" and num_labels == 2):
            continue
        needs = "two-label classification" if kinds == ("binary",) else " or ".join(kinds)
        problems.append(f"metric {name!r} needs a {needs} task, not {kind}"
                        + (f" with {num_labels} labels" if kind == "classification" and num_labels else ""))
    return problems


def compute_metrics(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Every metric of `task` plus `score`, their mean (all 0-100)."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("no examples to score")
    results = {name: float(METRICS[name](task, list(predictions), list(examples))) for name in task.metric_names}
    results["score"] = float(np.mean(list(results.values())))
    return results
