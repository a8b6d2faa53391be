"""Task names, aliases, task properties and custom tasks."""

import re
from pathlib import Path

import pytest

from compacter.tasks import GLUE_TASKS, SUPERGLUE_TASKS, TASK_NAMES, Task, custom_task, get_task

EXPECTED_NAMES = {
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli",
    "boolq", "cb", "copa", "multirc", "record", "superglue-rte", "wic", "wsc", "demo",
}


def test_task_names():
    assert set(TASK_NAMES) == EXPECTED_NAMES
    assert len(GLUE_TASKS) == 9 and len(SUPERGLUE_TASKS) == 8


@pytest.mark.parametrize("alias, name", [
    ("RTE", "rte"), ("glue-rte", "rte"), ("GLUE_RTE", "rte"), ("sst-2", "sst2"), ("SST2", "sst2"),
    ("STS-B", "stsb"), ("glue-sts-b", "stsb"), ("superglue-rte", "superglue-rte"), ("SuperGLUE-RTE", "superglue-rte"),
    ("super_glue-rte", "superglue-rte"), ("superglue-boolq", "boolq"), ("superglue-wsc.fixed", "wsc"),
    ("wsc.fixed", "wsc"), ("superglue-cb", "cb"), (" MultiRC ", "multirc"), ("superglue-record", "record"),
    ("Demo", "demo"),
])
def test_aliases(alias, name):
    assert get_task(alias).name == name


@pytest.mark.parametrize("name", ["mnli-mm", "MNLI-mm", "glue-mnli_mm"])
def test_mnli_mismatched_is_a_split_not_a_task(name):
    """'mnli-mm' resolved to 'mnli', whose test set is the matched one: asking for MNLI-mm gave
    matched accuracy without a word."""
    with pytest.raises(ValueError, match="MNLI-mismatched is a split of 'mnli'.*--split validation"):
        get_task(name)
    assert get_task("mnli-m").name == "mnli"


def test_unknown_task_lists_the_allowed_names():
    with pytest.raises(ValueError, match="unknown task 'glue-foo'.*cola.*superglue-rte.*demo"):
        get_task("glue-foo")


def test_get_task_passes_tasks_through():
    task = get_task("cb")
    assert get_task(task) is task


@pytest.mark.parametrize("name, kind, num_labels, label_texts", [
    ("cola", "classification", 2, ("0", "1")),
    ("mnli", "classification", 3, ("0", "1", "2")),
    ("cb", "classification", 3, ("0", "1", "2")),
    ("stsb", "regression", 1, None),
    ("record", "generation", None, None),
])
def test_task_shapes(name, kind, num_labels, label_texts):
    task = get_task(name)
    assert (task.kind, task.num_labels, task.label_texts) == (kind, num_labels, label_texts)
    assert task.is_regression == (kind == "regression")


def test_every_task_has_a_hub_source_or_is_the_demo():
    for name in TASK_NAMES:
        task = get_task(name)
        assert (task.hub is None) == (name == "demo"), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="ranking"), "kind must be one of"),
    (dict(kind="classification"), "needs label_names"),
    # the command line's spelling too: it was only label_names=[...], which no flag takes
    (dict(kind="classification"), r"needs label_names \(--label-names\).*e\.g\. --label-names negative positive"),
    (dict(kind="regression", metric_names=["bleu"]), "unknown metric 'bleu'"),
    (dict(kind="regression", metric_names=["accuracy"]), "metric 'accuracy' needs a classification task, not regression"),
    (dict(kind="generation", metric_names=["pearson"]), "metric 'pearson' needs a regression task"),
    (dict(kind="classification", label_names=["a", "b", "c"], metric_names=["mcc"]),
     "metric 'mcc' needs a two-label classification task, not classification with 3 labels"),
    (dict(kind="regression", text_columns="text"), "text_columns"),
    (dict(label_names=["neg", "pos", "neg"]), r"label_names \(--label-names\) give \['neg'\] more than once"),
    (dict(label_names=[1, "1"]), r"label_names \(--label-names\) give \['1'\] more than once"),  # both spell class "1"
    (dict(label_names=["a", "b"], text_columns=["text", "label"]),
     r"label_column \(--label-column\) 'label' is also one of the text_columns \(--text-columns\) \['text', 'label'\]"),
    (dict(kind="regression", text_columns=["text", "y"], label_column="y"), "'y' is also one of the text_columns"),
    (dict(label_names=["a", "b"], text_columns=["text", "title", "text"]), r"name \['text'\] more than once"),
])
def test_custom_task_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        custom_task("mine", **kwargs)


def test_custom_task_accepts_fitting_metrics():
    task = custom_task("mine", label_names=["a", "b"], metric_names=["mcc", "f1", "accuracy", "exact_match"])
    assert task.metric_names == ("mcc", "f1", "accuracy", "exact_match")


def test_every_builtin_task_has_metrics_that_fit_it():
    from compacter.tasks.metrics import metric_problems
    for name in TASK_NAMES:
        task = get_task(name)
        labels = len(task.label_names) if task.label_names else None
        assert metric_problems(task.metric_names, task.kind, labels) == [], name


def test_custom_task_collects_every_problem():
    with pytest.raises(ValueError, match="kind must be.*unknown metric 'bleu'"):
        custom_task("mine", kind="x", metric_names=["bleu"])


@pytest.mark.parametrize("kind, label_names, raw_label, target, label", [
    ("classification", ["neg", "pos"], "pos", "1", 1),
    ("classification", ["neg", "pos"], 0, "0", 0),
    ("classification", [0, 1], "1", "1", 1),
    ("regression", None, "3.75", "3.75", 3.75),
    ("generation", None, "Paris", "Paris", "Paris"),
])
def test_custom_task_formats(kind, label_names, raw_label, target, label):
    task = custom_task("mine", kind, text_columns=["title", "body"], label_column="y", label_names=label_names)
    [example] = task.format({"title": "T", "body": "B", "y": raw_label})
    assert (example.source, example.target, example.label) == ("title: T body: B", target, label)
    assert task.benchmark == "custom"


def test_task_validates_itself():
    with pytest.raises(ValueError, match="benchmark must be one of.*metric_names is empty"):
        Task("x", "kaggle", ("a",), (), label_names=("0", "1"))


def test_tasks_package_is_torch_free():
    package = Path(get_task.__code__.co_filename).parent
    pattern = re.compile(r"^\s*(import|from)\s+(torch|transformers|datasets)\b", re.M)
    for path in package.rglob("*.py"):
        matches = pattern.findall(path.read_text())
        allowed = [m for m in matches if m[1] == "datasets"] if path.name == "data.py" else []
        assert matches == allowed, f"{path.name} imports {matches}"
