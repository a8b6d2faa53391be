"""The packaged demo task: written for this project, balanced, not a keyword task."""

import json
import re
from importlib import resources

import pytest

from compacter.tasks import get_task, load_split
from compacter.tasks.demo import make_demo

DEMO = resources.files("compacter.tasks") / "demo"


def _rows(split):
    return [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text().splitlines()]


def test_files_are_what_the_generator_writes():
    assert make_demo.build() == {split: _rows(split) for split in make_demo.SIZES}


def test_splits_are_balanced_and_disjoint():
    seen = set()
    for split, size in make_demo.SIZES.items():
        rows = _rows(split)
        assert len(rows) == size and sum(r["label"] for r in rows) == size // 2
        sentences = {r["sentence"] for r in rows}
        assert len(sentences) == size and not sentences & seen
        seen |= sentences


def test_no_single_word_predicts_the_label():
    rows = _rows("train")
    words = [set(re.findall(r"[a-z']+", r["sentence"].lower())) for r in rows]
    for word in set().union(*words):
        hits = sum((word in w) == bool(r["label"]) for w, r in zip(words, rows))
        assert max(hits, len(rows) - hits) / len(rows) < 0.65, word


@pytest.mark.parametrize("word", ["bad", "worth", "great", "not", "but", "never", "awful", "good"])
def test_sentiment_words_occur_in_both_classes(word):
    labels = {r["label"] for split in make_demo.SIZES for r in _rows(split) if word in re.findall(r"[a-z]+", r["sentence"].lower())}
    assert labels == {0, 1}


def test_readme_says_it_was_written_for_this_project():
    text = (DEMO / "README.md").read_text()
    assert "Written for this project" in text and "make_demo.py" in text


def test_demo_task_formats_and_scores():
    task = get_task("demo")
    examples = load_split(task, "validation")
    assert examples[0].source == f"sentence: {_rows('validation')[0]['sentence']}"
    assert task.compute_metrics([e.target for e in examples], examples) == {"accuracy": 100.0, "score": 100.0}
