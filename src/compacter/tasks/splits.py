"""The paper's train / validation / test protocol (PAPER.md §4); test labels of GLUE and
SuperGLUE are hidden, so test sets are carved out of the official splits:

- "half"  (under 10k training examples): the official validation set, shuffled with `seed`,
  is cut in half: first half validation, second half test; train is the official train.
- "carve" (SST-2, QNLI, QQP, ReCoRD): 1,000 shuffled training examples become validation,
  the rest train; the official validation set is the test set.
- "mnli": validation-mismatched is validation, validation-matched is test.
- "given" (demo, custom data with a test file): the files' own splits.

Shuffling is numpy's `default_rng(seed).permutation`, so the partition is reproducible but
not the one of the released code (torch.randperm). Examples sharing a `group` (a MultiRC
question, a ReCoRD query) move together: sizes count groups, not examples, for those tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import Example, Task
from .data import load_split, locate_file
from .registry import get_task

VALIDATION_FROM_TRAIN = 1000
SMALL_TRAIN_LIMIT = 10_000
_HALF = ("cola", "mrpc", "stsb", "rte", "wnli", "boolq", "cb", "copa", "wic", "wsc", "multirc", "superglue-rte")
_CARVE = ("sst2", "qnli", "qqp", "record")
PROTOCOLS: dict[str, str] = {
    **dict.fromkeys(_HALF, "half"), **dict.fromkeys(_CARVE, "carve"), "mnli": "mnli", "demo": "given",
}
_SOURCES = {  # protocol -> (train, validation, test) official split names
    "half": ("train", "validation", "validation"),
    "carve": ("train", "train", "validation"),
    "mnli": ("train", "validation_mismatched", "validation_matched"),
    "given": ("train", "validation", "test"),
}

Units = list[list[Example]]


def group_units(examples: Sequence[Example]) -> Units:
    """Examples as units that are never split: one per group, or one per ungrouped example."""
    units: dict = {}
    for i, example in enumerate(examples):
        key = ("group", example.group) if example.group is not None else ("row", i)
        units.setdefault(key, []).append(example)
    return list(units.values())


def _flat(units: Units) -> list[Example]:
    return [example for unit in units for example in unit]


def _shuffled(units: Units, rng: np.random.Generator) -> Units:
    return [units[i] for i in rng.permutation(len(units))]


def split_half(examples: Sequence[Example], seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Shuffle (by group) and cut in half: (first half, second half); the first is smaller if odd."""
    units = _shuffled(group_units(examples), np.random.default_rng(seed))
    cut = len(units) // 2
    return _flat(units[:cut]), _flat(units[cut:])


def carve(examples: Sequence[Example], size: int, seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Shuffle (by group) and take `size` units out: (rest, carved)."""
    units = _shuffled(group_units(examples), np.random.default_rng(seed))
    if size >= len(units):
        raise ValueError(f"cannot carve {size} examples out of {len(units)}")
    return _flat(units[size:]), _flat(units[:size])


def subsample(examples: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """`size` units (groups) drawn without replacement, from a stream separate from the split seed."""
    units = group_units(examples)
    if not 0 < size <= len(units):
        raise ValueError(f"train_samples={size}, but the training split has {len(units)} examples")
    return _flat(_shuffled(units, np.random.default_rng([seed, 1]))[:size])


def protocol_for(task: Task, data_dir: str | Path | None = None) -> str:
    """The split protocol of a task; custom data: "given" with a test file, else by train size."""
    if task.name in PROTOCOLS:
        return PROTOCOLS[task.name]
    if data_dir is None:
        raise ValueError(f"custom task {task.name!r} needs data_dir (or use apply_protocol on loaded splits)")
    try:
        locate_file(task, "test", data_dir)
    except FileNotFoundError:
        return "auto"
    return "given"


def _carve_validation(train: Sequence[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """(rest, validation): the "carve" protocol's validation units taken out of the training set."""
    return carve(train, VALIDATION_FROM_TRAIN, seed)


def _sources(protocol: str) -> dict[str, str]:
    """split -> the official split it comes from under `protocol`; an unknown protocol is an error."""
    if protocol not in _SOURCES:
        raise ValueError(f"unknown split protocol {protocol!r}; choose one of {[*_SOURCES, 'auto']}")
    return dict(zip(("train", "validation", "test"), _SOURCES[protocol]))


def held_out(protocol: str, split: str, source: Sequence[Example], seed: int = 42) -> list[Example]:
    """The "validation" or "test" split of `protocol` from the one official split it comes from
    (`source`, named in `_SOURCES`): half of the official validation set ("half"), 1,000 units
    carved out of the training set ("carve" validation), or the official split itself. The one
    place both the whole protocol (:func:`apply_protocol`) and one split (:func:`paper_split`) cut it."""
    if split not in ("validation", "test"):
        raise ValueError(f"held-out split {split!r}: choose 'validation' or 'test'")
    if protocol == "auto":
        raise ValueError("split protocol 'auto' picks 'half' or 'carve' by the training set's size; "
                         "resolve it first (apply_protocol does)")
    _sources(protocol)  # an unknown protocol is an error naming the choices
    if protocol == "half":
        return split_half(source, seed)[("validation", "test").index(split)]
    if protocol == "carve" and split == "validation":
        return _carve_validation(source, seed)[1]
    return list(source)


def apply_protocol(
    protocol: str,
    official: dict[str, list[Example]],
    seed: int = 42,
    train_samples: int | None = None,
    sample_seed: int | None = None,
) -> dict[str, list[Example]]:
    """train/validation/test from official splits (keys as in `_SOURCES`); "auto" picks
    "half" or "carve" by training-set size, for custom data without a test file."""
    if protocol == "auto":
        protocol = "half" if len(group_units(official["train"])) < SMALL_TRAIN_LIMIT else "carve"
    sources = _sources(protocol)
    if protocol == "carve":  # one cut gives both parts, so they cannot overlap
        train, validation = _carve_validation(official["train"], seed)
    else:
        train, validation = list(official["train"]), held_out(protocol, "validation", official[sources["validation"]], seed)
    splits = {"train": train, "validation": validation, "test": held_out(protocol, "test", official[sources["test"]], seed)}
    if train_samples is not None:
        splits["train"] = subsample(splits["train"], train_samples, seed if sample_seed is None else sample_seed)
    return splits


def paper_splits(
    task: str | Task,
    data_dir: str | Path | None = None,
    seed: int = 42,
    train_samples: int | None = None,
    sample_seed: int | None = None,
) -> dict[str, list[Example]]:
    """{"train", "validation", "test"} examples of `task` under the paper's protocol.

    `train_samples=N` keeps N training examples (low-resource runs), drawn with their own
    generator seeded by `sample_seed` (default: `seed`), so validation and test stay fixed.
    """
    task = get_task(task)
    protocol = protocol_for(task, data_dir)
    names = set(_SOURCES["half" if protocol == "auto" else protocol])
    official = {name: load_split(task, name, data_dir) for name in sorted(names)}
    return apply_protocol(protocol, official, seed, train_samples, sample_seed)


def paper_split(task: str | Task, split: str, data_dir: str | Path | None = None, seed: int = 42) -> list[Example]:
    """One held-out split ("validation" or "test") of :func:`paper_splits`, the same examples,
    reading only the official split it comes from: the test set never needs the training file
    (it is half of the official validation set, or the official validation set itself; MNLI's
    validation-matched), and the validation set needs it only where the paper carves it out of the
    training set (SST-2, QNLI, QQP, ReCoRD), which a missing training file then says.
    ``train_samples`` does not matter here: it subsamples the training split only."""
    task = get_task(task)
    protocol = protocol_for(task, data_dir)
    if split not in ("validation", "test") or protocol == "auto":  # "auto" picks by the training set's size
        return paper_splits(task, data_dir, seed)[split]
    source = _sources(protocol)[split]
    try:
        official = load_split(task, source, data_dir)
    except FileNotFoundError as err:
        if source != "train":
            raise
        raise FileNotFoundError(f"{err}: the {split} split of {task.name} is {VALIDATION_FROM_TRAIN:,} examples carved out of "
                                f"its training set (the paper's protocol for large sets), so it needs that file "
                                f"(the test split does not)") from None
    return held_out(protocol, split, official, seed)
