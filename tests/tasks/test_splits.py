"""The paper's split protocol: sizes, seeded reproducibility, disjointness, groups."""

from collections import Counter

import pytest

from compacter.tasks import PROTOCOLS, Example, apply_protocol, custom_task, load_split, paper_splits
from compacter.tasks.splits import carve, group_units, split_half, subsample


def _examples(n, prefix="x", group_size=None):
    return [Example(f"{prefix}{i}", str(i % 2), i % 2, group=None if group_size is None else i // group_size)
            for i in range(n)]


def _sources(examples):
    return Counter(e.source for e in examples)


@pytest.mark.parametrize("name, protocol", [
    *[(n, "half") for n in ("cola", "mrpc", "stsb", "rte", "wnli", "boolq", "cb", "copa", "wic", "wsc", "multirc",
                            "superglue-rte")],
    *[(n, "carve") for n in ("sst2", "qnli", "qqp", "record")],
    ("mnli", "mnli"), ("demo", "given"),
])
def test_protocol_table(name, protocol):
    assert PROTOCOLS[name] == protocol


def test_half_protocol():
    official = {"train": _examples(50, "t"), "validation": _examples(41, "v")}
    splits = apply_protocol("half", official, seed=42)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [50, 20, 21]
    assert splits["train"] == official["train"]
    assert _sources(splits["validation"]) + _sources(splits["test"]) == _sources(official["validation"])
    assert not set(_sources(splits["validation"])) & set(_sources(splits["test"]))


def test_carve_protocol():
    official = {"train": _examples(3000, "t"), "validation": _examples(100, "v")}
    splits = apply_protocol("carve", official, seed=42)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [2000, 1000, 100]
    assert _sources(splits["train"]) + _sources(splits["validation"]) == _sources(official["train"])
    assert splits["test"] == official["validation"]


def test_mnli_protocol():
    official = {"train": _examples(5), "validation_mismatched": _examples(3, "mm"), "validation_matched": _examples(4, "m")}
    splits = apply_protocol("mnli", official)
    assert (splits["validation"], splits["test"]) == (official["validation_mismatched"], official["validation_matched"])


@pytest.mark.parametrize("train_size, protocol_sizes", [(500, (500, 50, 50)), (10_500, (9500, 1000, 100))])
def test_auto_protocol_for_custom_data_by_train_size(train_size, protocol_sizes):
    official = {"train": _examples(train_size, "t"), "validation": _examples(100, "v")}
    splits = apply_protocol("auto", official)
    assert tuple(len(splits[k]) for k in ("train", "validation", "test")) == protocol_sizes


@pytest.mark.parametrize("fn", [lambda e, s: split_half(e, s), lambda e, s: carve(e, 10, s)])
def test_seeded_reproducibility(fn):
    examples = _examples(100)
    assert fn(examples, 42) == fn(examples, 42)
    assert fn(examples, 42) != fn(examples, 43)


def test_groups_are_never_split():
    examples = _examples(90, group_size=3)  # 30 groups of 3
    for left, right in (split_half(examples, 0), carve(examples, 10, 0)):
        assert not {e.group for e in left} & {e.group for e in right}
        assert all(count == 3 for count in Counter(e.group for e in left + right).values())
    assert len(carve(examples, 10, 0)[1]) == 30  # sizes count groups
    assert len(subsample(examples, 5, 0)) == 15


def test_group_units_keeps_first_appearance_order():
    examples = [Example("a", "0", 0, group="q2"), Example("b", "0", 0, group="q1"), Example("c", "0", 0, group="q2"),
                Example("d", "0", 0)]
    assert [[e.source for e in u] for u in group_units(examples)] == [["a", "c"], ["b"], ["d"]]


def test_train_samples_is_seeded_and_independent_of_the_split():
    official = {"train": _examples(3000, "t"), "validation": _examples(100, "v")}
    base = apply_protocol("carve", official, seed=42)
    small = apply_protocol("carve", official, seed=42, train_samples=100)
    other = apply_protocol("carve", official, seed=42, train_samples=100, sample_seed=7)
    assert len(small["train"]) == 100 and _sources(small["train"]) <= _sources(base["train"])
    assert small == apply_protocol("carve", official, seed=42, train_samples=100)
    assert small["validation"] == other["validation"] == base["validation"]
    assert small["test"] == other["test"]
    assert small["train"] != other["train"]


@pytest.mark.parametrize("size", [0, 3001])
def test_train_samples_out_of_range(size):
    with pytest.raises(ValueError, match="train_samples"):
        apply_protocol("half", {"train": _examples(3000), "validation": _examples(10)}, train_samples=size)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown split protocol"):
        apply_protocol("thirds", {})


def test_demo_splits_are_the_packaged_files():
    splits = paper_splits("demo")
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [300, 60, 60]
    assert len(paper_splits("demo", train_samples=100)["train"]) == 100


@pytest.mark.parametrize("with_test, sizes", [(True, (4, 2, 3)), (False, (4, 1, 1))])
def test_custom_task_paper_splits(tmp_path, with_test, sizes):
    task = custom_task("mine", text_columns=["text"], label_names=["a", "b"])
    counts = {"train": 4, "validation": 2, "test": 3 if with_test else 0}
    for split, n in counts.items():
        if n:
            (tmp_path / f"{split}.csv").write_text("text,label\n" + "".join(f"{split}{i},a\n" for i in range(n)))
    splits = paper_splits(task, tmp_path)
    assert tuple(len(splits[k]) for k in ("train", "validation", "test")) == sizes


def test_custom_task_needs_data_dir_for_paper_splits():
    with pytest.raises(ValueError, match="needs data_dir"):
        paper_splits(custom_task("mine", text_columns=["text"], label_names=["a", "b"]))


# --- on the shared benchmark copies ---

@pytest.mark.parametrize("name, sizes", [
    ("rte", (2490, 138, 139)), ("cola", (8551, 521, 522)), ("stsb", (5749, 750, 750)), ("mrpc", (3668, 204, 204)),
    ("sst2", (66349, 1000, 872)), ("cb", (250, 28, 28)), ("copa", (400, 50, 50)), ("wsc", (554, 52, 52)),
    ("superglue-rte", (2490, 138, 139)),
])
def test_shared_data_split_sizes(shared_data, name, sizes):
    splits = paper_splits(name, shared_data)
    assert tuple(len(splits[k]) for k in ("train", "validation", "test")) == sizes


def test_shared_data_splits_are_reproducible_and_disjoint(shared_data):
    first, again, other = (paper_splits("mrpc", shared_data, seed=s) for s in (42, 42, 1))
    assert first == again
    official = load_split("mrpc", "validation", shared_data)
    assert _sources(first["validation"]) + _sources(first["test"]) == _sources(official)
    assert first["validation"] != other["validation"]


def _glue_dir(root, names):
    """Tiny GLUE release files: RTE (train, dev), SST-2 (1,010 train rows, so 1,000 carve out), MNLI."""
    pair = "index\tsentence1\tsentence2\tlabel\n"
    files = {
        "RTE/train.tsv": pair + "".join(f"{i}\tt{i}\th{i}\tentailment\n" for i in range(12)),
        "RTE/dev.tsv": pair + "".join(f"{i}\td{i}\th{i}\tnot_entailment\n" for i in range(9)),
        "SST-2/train.tsv": "sentence\tlabel\n" + "".join(f"s{i}\t{i % 2}\n" for i in range(1010)),
        "SST-2/dev.tsv": "sentence\tlabel\n" + "".join(f"v{i}\t1\n" for i in range(7)),
        "MNLI/train.tsv": "sentence1\tsentence2\tgold_label\n" + "".join(f"p{i}\th{i}\tneutral\n" for i in range(5)),
        "MNLI/dev_matched.tsv": "sentence1\tsentence2\tgold_label\n" + "".join(f"m{i}\th{i}\tneutral\n" for i in range(4)),
        "MNLI/dev_mismatched.tsv": "sentence1\tsentence2\tgold_label\n" + "".join(f"x{i}\th{i}\tneutral\n" for i in range(3)),
    }
    for name, text in files.items():
        if name.split("/")[0] in names:
            (root / "glue" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "glue" / name).write_text(text)
    return root


@pytest.mark.parametrize("task", ["rte", "sst2", "mnli", "demo"])
@pytest.mark.parametrize("split", ["validation", "test"])
def test_paper_split_is_paper_splits_split(tmp_path, task, split):
    """`compacter evaluate` scores one split: the same examples as the whole protocol gives."""
    from compacter.tasks.splits import paper_split

    data_dir = None if task == "demo" else _glue_dir(tmp_path, ("RTE", "SST-2", "MNLI"))
    for seed in (42, 7):
        assert paper_split(task, split, data_dir, seed) == paper_splits(task, data_dir, seed)[split]


@pytest.mark.parametrize("task, folder", [("rte", "RTE"), ("sst2", "SST-2"), ("mnli", "MNLI")])
def test_the_test_split_needs_no_training_file(tmp_path, task, folder):
    """evaluate read (and needed) train.tsv to score the test split, which never comes from it."""
    from compacter.tasks.splits import paper_split

    full = paper_splits(task, _glue_dir(tmp_path / "full", (folder,)))["test"]
    data_dir = _glue_dir(tmp_path / "dev-only", (folder,))
    (data_dir / "glue" / folder / "train.tsv").unlink()
    assert paper_split(task, "test", data_dir) == full
    if task == "rte":  # the validation half of dev.tsv needs no training file either
        assert paper_split(task, "validation", data_dir)


def test_a_validation_split_carved_from_train_says_it_needs_that_file(tmp_path):
    from compacter.tasks.splits import paper_split

    data_dir = _glue_dir(tmp_path, ("SST-2",))
    (data_dir / "glue" / "SST-2" / "train.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no train\.tsv .*the validation split of sst2 is 1,000 examples carved out "
                                                r"of its training set .*needs that file \(the test split does not\)"):
        paper_split("sst2", "validation", data_dir)


def test_held_out_names_what_it_takes():
    from compacter.tasks.splits import held_out

    with pytest.raises(ValueError, match="held-out split 'train': choose 'validation' or 'test'"):
        held_out("half", "train", _examples(10))
    with pytest.raises(ValueError, match="unknown split protocol 'thirds'"):
        held_out("thirds", "test", _examples(10))
    with pytest.raises(ValueError, match="'auto' picks 'half' or 'carve'.*resolve it first"):
        held_out("auto", "test", _examples(10))
    assert held_out("given", "test", _examples(3)) == _examples(3)
