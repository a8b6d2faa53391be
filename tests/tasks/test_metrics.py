"""Metrics against scikit-learn / scipy on random inputs, plus the text-to-text rules."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from compacter.tasks import Example, custom_task, get_task
from compacter.tasks import metrics as M

SEEDS = range(5)


def _examples(task, gold_ids):
    return [Example(f"s{i}", str(g), int(g)) for i, g in enumerate(gold_ids)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, num_labels, reference", [
    ("accuracy", 3, lambda p, g: skm.accuracy_score(g, p)),
    ("f1", 2, lambda p, g: skm.f1_score(g, p)),
    ("macro_f1", 3, lambda p, g: skm.f1_score(g, p, average="macro")),
    ("mcc", 2, lambda p, g: skm.matthews_corrcoef(g, p)),
])
def test_classification_metrics_match_sklearn(seed, name, num_labels, reference):
    rng = np.random.default_rng(seed)
    gold, pred = rng.integers(0, num_labels, 200), rng.integers(0, num_labels, 200)
    task = get_task({2: "mrpc", 3: "cb"}[num_labels])
    value = M.METRICS[name](task, [str(p) for p in pred], _examples(task, gold))
    assert value == pytest.approx(100 * reference(pred, gold))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, reference", [("pearson", stats.pearsonr), ("spearman", stats.spearmanr)])
def test_correlations_match_scipy(seed, name, reference):
    rng = np.random.default_rng(seed)
    gold, pred = rng.uniform(0, 5, 100), rng.uniform(0, 5, 100)
    examples = [Example("s", "0.0", float(g)) for g in gold]
    value = M.METRICS[name](get_task("stsb"), [repr(float(p)) for p in pred], examples)
    assert value == pytest.approx(100 * reference(gold, pred)[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_multirc_matches_sklearn_f1_and_per_question_em(seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 20, 150)
    gold, pred = rng.integers(0, 2, 150), rng.integers(0, 2, 150)
    examples = [Example("s", str(g), int(g), group=int(q)) for g, q in zip(gold, groups)]
    result = get_task("multirc").compute_metrics([str(p) for p in pred], examples)
    em = np.mean([np.all(pred[groups == q] == gold[groups == q]) for q in np.unique(groups)])
    assert result["f1a"] == pytest.approx(100 * skm.f1_score(gold, pred))
    assert result["group_em"] == pytest.approx(100 * em)


# --- invalid predictions count as wrong ---

@pytest.mark.parametrize("name, predictions, gold, expected", [
    ("accuracy", ["1", "yes", " 0 "], [1, 1, 0], 200 / 3),  # whitespace around a label is fine
    ("f1", ["maybe", "1"], [1, 1], 100 * 2 / 3),  # invalid on a positive: a false negative
    ("f1", ["maybe", "1"], [0, 1], 100 * 2 / 3),  # invalid on a negative: a false positive
    ("mcc", ["x", "x", "x", "x"], [0, 1, 0, 1], -100.0),  # all invalid = all flipped
])
def test_invalid_predictions_are_wrong(name, predictions, gold, expected):
    task = get_task("mrpc")
    assert M.METRICS[name](task, predictions, _examples(task, gold)) == pytest.approx(expected)


def test_invalid_prediction_in_macro_f1_is_a_miss_only():
    task = get_task("cb")
    gold = [0, 1, 2, 0]
    value = M.METRICS["macro_f1"](task, ["0", "1", "2", "?"], _examples(task, gold))
    assert value == pytest.approx(100 * np.mean([2 / 3, 1.0, 1.0]))


def test_unparsable_regression_prediction_scores_minus_one():
    examples = [Example("s", "0.0", g) for g in (0.0, 1.0, 2.0, 3.0)]
    value = M.METRICS["pearson"](get_task("stsb"), ["0.0", "1.0", "two", "3.0"], examples)
    assert value == pytest.approx(100 * stats.pearsonr([0, 1, 2, 3], [0, 1, -1, 3])[0])


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_one_example_gives_zero_correlation(name):
    assert M.METRICS[name](get_task("stsb"), ["3.0"], [Example("s", "3.0", 3.0)]) == 0.0


def test_constant_predictions_give_zero_correlation():
    examples = [Example("s", "0.0", g) for g in (0.0, 1.0, 2.0)]
    assert get_task("stsb").compute_metrics(["1.0"] * 3, examples) == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}


# --- SQuAD-style answers (ReCoRD) ---

@pytest.mark.parametrize("prediction, answer, f1, em", [
    ("The Eiffel Tower", "eiffel tower", 1.0, 1.0),
    ("Eiffel Tower!", "the Eiffel tower", 1.0, 1.0),
    ("Tower of Pisa", "Eiffel Tower", 0.4, 0.0),  # 1 common token: p=1/3, r=1/2
    ("", "Paris", 0.0, 0.0),
    ("an apple", "a  apple", 1.0, 1.0),
])
def test_squad_token_f1_and_exact_match(prediction, answer, f1, em):
    assert M.token_f1(prediction, answer) == pytest.approx(f1)
    assert M.exact_match(prediction, answer) == em


def test_record_takes_max_over_answers_and_averages_per_query():
    answers = ("Barack Obama", "Obama")
    examples = [Example("q1", a, a, group="q1", answers=answers) for a in answers]
    examples.append(Example("q2", "Merkel", "Merkel", group="q2", answers=("Merkel",)))
    result = get_task("record").compute_metrics(["obama", "obama", "Angela"], examples)
    assert result == {"token_f1": 50.0, "exact_match": 50.0, "score": 50.0}


# --- per task: which metrics, score = mean ---

@pytest.mark.parametrize("name, keys", [
    ("cola", {"mcc"}), ("stsb", {"pearson", "spearman"}), ("mrpc", {"f1", "accuracy"}),
    ("qqp", {"f1", "accuracy"}), ("cb", {"macro_f1", "accuracy"}), ("multirc", {"f1a", "group_em"}),
    ("record", {"token_f1", "exact_match"}), ("rte", {"accuracy"}), ("sst2", {"accuracy"}),
    ("mnli", {"accuracy"}), ("qnli", {"accuracy"}), ("wnli", {"accuracy"}), ("boolq", {"accuracy"}),
    ("copa", {"accuracy"}), ("superglue-rte", {"accuracy"}), ("wic", {"accuracy"}), ("wsc", {"accuracy"}),
    ("demo", {"accuracy"}),
])
def test_each_task_reports_its_metrics_and_their_mean(name, keys):
    task = get_task(name)
    rng = np.random.default_rng(0)
    if task.kind == "classification":
        gold = rng.integers(0, task.num_labels, 50)
        examples = [Example("s", str(g), int(g), group=i // 3) for i, g in enumerate(gold)]
        predictions = [str(p) for p in rng.integers(0, task.num_labels, 50)]
    elif task.kind == "regression":
        examples = [Example("s", "0.0", float(g)) for g in rng.uniform(0, 5, 50)]
        predictions = [str(p) for p in rng.uniform(0, 5, 50).tolist()]
    else:
        examples = [Example("s", "a b", "a b", group=i, answers=("a b",)) for i in range(50)]
        predictions = ["a"] * 25 + ["a b"] * 25
    result = task.compute_metrics(predictions, examples)
    assert set(result) == keys | {"score"}
    assert result["score"] == pytest.approx(np.mean([result[k] for k in keys]))
    assert all(-100 <= v <= 100 for v in result.values())


def test_perfect_predictions_score_100():
    task = get_task("mrpc")
    examples = _examples(task, [0, 1, 1, 0])
    assert task.compute_metrics([e.target for e in examples], examples)["score"] == pytest.approx(100.0)


@pytest.mark.parametrize("predictions, examples, message", [
    (["0"], [], "1 predictions for 0 examples"),
    ([], [], "no examples"),
])
def test_compute_metrics_checks_its_inputs(predictions, examples, message):
    with pytest.raises(ValueError, match=message):
        get_task("rte").compute_metrics(predictions, examples)


# --- encoder heads ---

def test_head_outputs_map_to_targets_and_score_the_same():
    task = get_task("cb")
    examples = _examples(task, [0, 1, 2, 2])
    targets = task.to_targets(np.array([0, 1, 2, 0]))
    assert targets == ["0", "1", "2", "0"]
    assert task.compute_metrics(targets, examples)["accuracy"] == 75.0


def test_regression_head_outputs():
    task = get_task("stsb")
    assert task.to_targets(np.array([3.25, 1.0], dtype=np.float32)) == ["3.25", "1.0"]


@pytest.mark.parametrize("name, output", [("cb", 3), ("cb", -1), ("cb", 1.5), ("record", 0)])
def test_bad_head_outputs(name, output):
    with pytest.raises(ValueError):
        get_task(name).to_target(output)


def test_custom_binary_task_uses_f1_when_asked():
    task = custom_task("spam", text_columns=["text"], label_names=["ham", "spam"], metric_names=["f1", "accuracy"])
    examples = _examples(task, [1, 1, 0])
    assert task.compute_metrics(["1", "0", "0"], examples) == pytest.approx(
        {"f1": 100 * 2 / 3, "accuracy": 200 / 3, "score": 100 * 2 / 3})
