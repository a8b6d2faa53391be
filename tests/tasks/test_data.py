"""Reading release files, the hub (mocked), user files and the demo; every data error."""

import json
import sys
import types

import pytest

from compacter.tasks import DataError, custom_task, get_task, load_file, load_files, load_split, rows_to_examples

# --- GLUE / SuperGLUE release layouts (small synthetic copies) ---

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1", "label1\tlabel2\tlabel3\tlabel4\tlabel5")

# (task, folder, file, content, split, (source, target) of the first example)
GLUE_FILES = [
    ("cola", "CoLA", "train.tsv", "gj04\t1\t\tOur friends won't buy it.\ngj04\t0\t*\tThem left.\n", "train",
     ("sentence: Our friends won't buy it.", "1")),
    ("sst2", "SST-2", "dev.tsv", "sentence\tlabel\nit 's a \"charming journey . \t1\n", "validation",
     ("sentence: it 's a \"charming journey . ", "1")),
    ("mrpc", "MRPC", "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tHe said \"no.\tHe refused.\n",
     "train", ("sentence1: He said \"no. sentence2: He refused.", "0")),
    ("stsb", "STS-B", "dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man.\tA guy.\t4.750\n", "validation",
     ("sentence1: A man. sentence2: A guy.", "4.8")),
    ("rte", "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tS1.\tS2.\tnot_entailment\n", "train",
     ("sentence1: S1. sentence2: S2.", "1")),
    ("qqp", "QQP", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n5\t1\t2\tWhy?\tHow come?\t1\n",
     "train", ("question1: Why? question2: How come?", "1")),
    ("qnli", "QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n", "validation",
     ("question: Who? sentence: Him.", "0")),
    ("wnli", "WNLI", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n", "train",
     ("sentence1: A. sentence2: B.", "1")),
    ("mnli", "MNLI", "train.tsv", f"{MNLI_TRAIN_HEADER}\n0\t1\t1e\tgov\t(a)\t(b)\t(a)\t(b)\tP.\tH.\tneutral\tneutral\n",
     "train", ("premise: P. hypothesis: H.", "1")),
    ("mnli", "MNLI", "dev_matched.tsv",
     f"{MNLI_DEV_HEADER}\n0\t1\t1e\tgov\t(a)\t(b)\t(a)\t(b)\tP.\tH.\tneutral\tcontradiction\tcontradiction\t"
     "neutral\tcontradiction\tcontradiction\n", "validation_matched", ("premise: P. hypothesis: H.", "2")),
    ("mnli", "MNLI", "dev_mismatched.tsv",
     f"{MNLI_DEV_HEADER}\n0\t1\t1e\tgov\t(a)\t(b)\t(a)\t(b)\tP.\tH.\tentailment\tentailment\tentailment\t"
     "entailment\tentailment\tentailment\n", "validation_mismatched", ("premise: P. hypothesis: H.", "0")),
    ("boolq", "BoolQ", "val.jsonl", '{"question": "is it", "passage": "It is.", "idx": 0, "label": true}\n',
     "validation", ("question: is it passage: It is.", "1")),
    ("wic", "WiC", "train.jsonl", '{"word": "bank", "sentence1": "A.", "sentence2": "B.", "idx": 0, "label": false,'
     ' "start1": 0, "start2": 0, "end1": 1, "end2": 1, "version": 1.1}\n', "train",
     ("sentence1: A. sentence2: B. word: bank", "0")),
    ("cb", "CB", "dev32.jsonl", '{"premise": "P.", "hypothesis": "H.", "label": "neutral", "idx": 0}\n', "dev32",
     ("premise: P. hypothesis: H.", "2")),
]


def _benchmark(name):
    return get_task(name).benchmark


@pytest.mark.parametrize("name, folder, file, content, split, first", GLUE_FILES)
def test_release_layouts(tmp_path, name, folder, file, content, split, first):
    path = tmp_path / _benchmark(name) / folder / file
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    examples = load_split(name, split, tmp_path)
    assert (examples[0].source, examples[0].target) == first
    assert len(examples) == content.count("\n") - (file.endswith(".tsv") and name != "cola")


@pytest.mark.parametrize("where", ["root", "benchmark", "task"])
def test_data_dir_may_point_at_root_benchmark_or_task_folder(tmp_path, where):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    data_dir = {"root": tmp_path, "benchmark": tmp_path / "glue", "task": folder}[where]
    assert len(load_split("rte", "validation", data_dir)) == 1


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv.*glue/RTE"):
        load_split("rte", "validation", tmp_path)


@pytest.mark.parametrize("name, split, allowed", [
    ("mnli", "validation", "validation_matched"), ("rte", "test", "train"), ("cb", "dev", "dev32"),
])
def test_unknown_split_lists_the_allowed_ones(tmp_path, name, split, allowed):
    with pytest.raises(ValueError, match=allowed):
        load_split(name, split, tmp_path)


def test_multirc_and_record_release_rows_expand(tmp_path):
    multirc = {"idx": 0, "passage": {"text": "T<br>", "questions": [
        {"idx": 0, "question": "Q", "answers": [{"idx": 0, "text": "a", "label": 1}, {"idx": 1, "text": "b", "label": 0}]}]}}
    record = {"idx": 0, "passage": {"text": "Ann met Bob.", "entities": [{"start": 0, "end": 2}, {"start": 8, "end": 10}]},
              "qas": [{"idx": 0, "query": "@placeholder met Bob.", "answers": [{"start": 0, "end": 2, "text": "Ann"}]},
                      {"idx": 1, "query": "Ann met @placeholder.", "answers": [{"start": 8, "end": 10, "text": "Bob"}]}]}
    for folder, row in (("MultiRC", multirc), ("ReCoRD", record)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.jsonl").write_text(json.dumps(row) + "\n")
    assert [e.group for e in load_split("multirc", "train", tmp_path)] == ["0-0", "0-0"]
    assert [(e.target, e.group) for e in load_split("record", "train", tmp_path)] == [("Ann", "0-0"), ("Bob", "0-1")]


# --- data errors name file and line ---

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
CB_ROW = '{"premise": "P", "hypothesis": "H", "label": "neutral", "idx": 0}\n'

# (task, file under data_dir, content, split, message pattern with {path})
BAD_FILES = [
    ("rte", "RTE/train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n", "train", r"{path}:3: 3 fields, expected 4"),
    ("rte", "RTE/train.tsv", RTE_HEADER + "0\ta\tb\tentailment\textra\n", "train", r"{path}:2: 5 fields, expected 4"),
    ("rte", "RTE/train.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n", "train", r"{path}:1: missing column.*'label'"),
    ("rte", "RTE/train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n\n2\ta\tb\tentailed\n", "train",
     r"{path}:4: unknown label 'entailed'"),
    ("stsb", "STS-B/dev.tsv", STSB_HEADER + "0\tg\tf\ty\t0\tn\tn\ta\tb\tabc\n", "validation", r"{path}:2: unparsable score 'abc'"),
    ("rte", "RTE/train.tsv", "", "train", r"{path}: empty file"),
    ("rte", "RTE/train.tsv", RTE_HEADER, "train", r"{path}: no examples"),
    ("cola", "CoLA/train.tsv", "", "train", r"{path}: no examples"),
    ("cola", "CoLA/train.tsv", "gj04\t1\t\tGood.\ngj04\t1\tBad row.\n", "train", r"{path}:2: 3 fields, expected 4"),
    ("cb", "CB/train.jsonl", CB_ROW + '{"premise": "P", "hypothesis": \n', "train", r"{path}:2: bad JSON"),
    ("cb", "CB/train.jsonl", "[1, 2]\n", "train", r"{path}:1: expected a JSON object, got list"),
    ("cb", "CB/train.jsonl", CB_ROW + '{"premise": "P", "label": "neutral"}\n', "train",
     r"{path}:2: missing field 'hypothesis'"),
    ("cb", "CB/train.jsonl", CB_ROW + "\n" + CB_ROW.replace("neutral", "maybe"), "train", r"{path}:3: unknown label 'maybe'"),
    ("cb", "CB/train.jsonl", "\n\n", "train", r"{path}: no examples"),
    ("wsc", "WSC/val.jsonl", '{"text": "A b.", "label": true, "target": {"span1_index": 0, "span1_text": "Z",'
     ' "span2_index": 1, "span2_text": "b"}}\n', "validation", r"{path}:1: WSC span 'Z'"),
    ("wsc", "WSC/val.jsonl", '{"text": "A b.", "label": true, "target": {"span1_index": "x", "span1_text": "A",'
     ' "span2_index": 1, "span2_text": "b"}}\n', "validation", r"{path}:1: WSC span1_index must be a word index, got 'x'"),
]


@pytest.mark.parametrize("name, file, content, split, message", BAD_FILES)
def test_malformed_data_raises_data_error_naming_file_and_line(tmp_path, name, file, content, split, message):
    path = tmp_path / file
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.format(path=str(path))):
        load_split(name, split, tmp_path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_non_utf8_file(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_bytes(RTE_HEADER.encode() + b"0\t\xff\xfe\tb\tentailment\n")
    with pytest.raises(DataError, match="train.tsv"):
        load_split("rte", "train", tmp_path)


# --- the hub path (mocked; never touches the network) ---

class FakeDatasets(types.ModuleType):
    def __init__(self, rows=None, error=None):
        super().__init__("datasets")
        self.rows, self.error, self.calls = rows or [], error, []

    def load_dataset(self, repo, config, split):
        self.calls.append((repo, config, split))
        if self.error:
            raise self.error
        return self.rows


@pytest.mark.parametrize("name, split, call", [
    ("rte", "validation", ("nyu-mll/glue", "rte", "validation")),
    ("superglue-rte", "train", ("aps/super_glue", "rte", "train")),
    ("wsc", "validation", ("aps/super_glue", "wsc.fixed", "validation")),
    ("mnli", "validation_matched", ("nyu-mll/glue", "mnli", "validation_matched")),
    ("sst2", "train", ("nyu-mll/glue", "sst2", "train")),
])
def test_hub_calls(monkeypatch, name, split, call):
    rows = {"rte": [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}],
            "superglue-rte": [{"premise": "a", "hypothesis": "b", "label": 1, "idx": 0}],
            "wsc": [{"text": "He ran.", "span1_index": 0, "span1_text": "He", "span2_index": 1, "span2_text": "ran",
                     "label": 0, "idx": 0}],
            "mnli": [{"premise": "a", "hypothesis": "b", "label": 2, "idx": 0}],
            "sst2": [{"sentence": "fine", "label": 1, "idx": 0}]}[name]
    fake = FakeDatasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert len(load_split(name, split)) == 1
    assert fake.calls == [call]


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"needs the `datasets` package.*data_dir"):
        load_split("rte", "train")


def test_hub_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(error=ConnectionError("no network")))
    with pytest.raises(RuntimeError, match=r"could not load nyu-mll/glue.*no network\. Offline\? .*data_dir"):
        load_split("cola", "train")


def test_a_hub_error_that_is_not_the_network_is_not_called_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(error=ValueError("BuilderConfig 'cola' not found")))
    with pytest.raises(RuntimeError, match=r"ValueError: BuilderConfig 'cola' not found\. Pass data_dir=") as err:
        load_split("cola", "train")
    assert "Offline" not in str(err.value)


def test_hub_bad_row_names_the_row(monkeypatch):
    rows = [{"sentence": "ok", "label": 1}, {"sentence": "test row", "label": -1}]
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(rows))
    with pytest.raises(DataError, match=r"nyu-mll/glue/cola\[train\] row 1: unknown label -1"):
        load_split("cola", "train")


def test_few_shot_splits_are_not_on_the_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets())
    with pytest.raises(ValueError, match="no hub split 'train32'"):
        load_split("cb", "train32")


def test_in_memory_rows():
    examples = rows_to_examples("rte", [{"sentence1": "a", "sentence2": "b", "label": 1}])
    assert examples[0].target == "1"
    with pytest.raises(DataError, match="row 0: unknown label"):
        rows_to_examples("rte", [{"sentence1": "a", "sentence2": "b", "label": 5}])


# --- custom files ---

REVIEWS = custom_task("reviews", text_columns=["title", "review"], label_column="stars", label_names=["bad", "good"])


@pytest.mark.parametrize("name, content", [
    ("data.csv", 'title,review,stars\nNice,"Great, really",good\nMeh,"Said ""no""",bad\n'),
    ("data.tsv", "title\treview\tstars\nNice\tGreat, really\tgood\nMeh\tSaid \"no\"\tbad\n"),
    ("data.jsonl", '{"title": "Nice", "review": "Great, really", "stars": "good"}\n'
                   '{"title": "Meh", "review": "Said \\"no\\"", "stars": 0}\n'),
    ("data.json", '[{"title": "Nice", "review": "Great, really", "stars": "good"},\n'
                  ' {"title": "Meh", "review": "Said \\"no\\"", "stars": "bad"}]'),
])
def test_custom_files(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    examples = load_file(REVIEWS, tmp_path / name)
    assert [(e.source, e.target) for e in examples] == [
        ("title: Nice review: Great, really", "1"), ('title: Meh review: Said "no"', "0")]


@pytest.mark.parametrize("content, message", [
    ("title,stars\nNice,good\n", r"{path}:1: missing column.*'review'"),
    ("title,review,stars\nNice,Great,good\nMeh,Bad,terrible\n", r"{path}:3: unknown label 'terrible'"),
    ("title,review,stars\nNice,Great\n", r"{path}:2: 2 fields, expected 3"),
    ("\ufefftitle,review,stars\n", r"{path}: no examples"),  # BOM is not part of the first column name
    # a column named twice: which one is the input? (dict(zip()) kept the last one, silently)
    ("title,review,stars,review\nNice,Great,good,SOMETHING ELSE\n", r"{path}:1: column\(s\) \['review'\] named more than once"),
])
def test_custom_file_errors(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.format(path=str(path))):
        load_file(REVIEWS, path)


@pytest.mark.parametrize("content", [
    "title,review,stars,,\nNice,Great,good,,\n",  # blank trailing columns, as spreadsheets export them
    "title,review,stars,note,note\nNice,Great,good,a,b\n",  # a repeated column that is never read
])
def test_repeated_columns_that_are_not_read_are_fine(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    [example] = load_file(REVIEWS, path)
    assert example.source == "title: Nice review: Great"


@pytest.mark.parametrize("name, content, message", [
    ("data.jsonl", '{"title": "a", "review": "b", "stars": "good"}\n{"title": "a", "review": "b", "review": "X", "stars": "bad"}\n',
     r"{path}:2: key 'review' appears twice"),
    ("data.json", '[{"title": "a", "review": "b", "stars": "good", "stars": "bad"}]', r"{path}: key 'stars' appears twice"),
])
def test_json_keys_given_twice(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message.format(path=str(path))):
        load_file(REVIEWS, path)


@pytest.mark.parametrize("names", [["true", "false"], ["false", "true"], ["True", "False"], ["no", "yes"]])
def test_json_booleans_take_the_class_their_name_spells(tmp_path, names):
    file = tmp_path / "b.jsonl"
    file.write_text('{"text": "good", "label": true}\n{"text": "bad", "label": false}\n')
    task = custom_task("x", text_columns=["text"], label_names=names)
    got = [task.label_names[e.label] for e in load_file(task, file)]
    # named true/false: that class; otherwise the index (False=0, True=1), as before
    assert got == ([n for n in names if n.lower() == "true"] + [n for n in names if n.lower() == "false"]
                   if "true" in [n.lower() for n in names] else [names[1], names[0]])


def test_load_files_and_custom_data_dir(tmp_path):
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.csv").write_text("title,review,stars\na,b,good\n")
    splits = load_files(REVIEWS, train=tmp_path / "train.csv", validation=tmp_path / "dev.csv", test=None)
    assert sorted(splits) == ["train", "validation"]
    assert len(load_split(REVIEWS, "validation", tmp_path)) == 1  # dev.csv found as validation


def test_unsupported_file_type(tmp_path):
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_file(REVIEWS, tmp_path / "data.txt")


def test_custom_task_without_data_dir():
    with pytest.raises(ValueError, match="pass data_dir"):
        load_split(REVIEWS, "train")


# --- the demo task ---

@pytest.mark.parametrize("split, size", [("train", 300), ("validation", 60), ("test", 60)])
def test_demo_loads_from_the_package(split, size):
    examples = load_split("demo", split)
    assert len(examples) == size
    assert {e.target for e in examples} == {"0", "1"}
    assert all(e.source.startswith("sentence: ") for e in examples)


# --- the shared benchmark copies (skipped when absent) ---

SHARED_SPLITS = [
    ("cola", "train", 8551), ("cola", "validation", 1043), ("sst2", "train", 67349), ("sst2", "validation", 872),
    ("mrpc", "train", 3668), ("mrpc", "validation", 408), ("stsb", "train", 5749), ("stsb", "validation", 1500),
    ("rte", "train", 2490), ("rte", "validation", 277),
    *[(name, split, n) for name, sizes in {"cb": (250, 56), "copa": (400, 100), "superglue-rte": (2490, 277),
                                           "wsc": (554, 104)}.items()
      for split, n in zip(("train", "validation", "train32", "dev32"), (*sizes, 32, 32))],
]


@pytest.mark.parametrize("name, split, rows", SHARED_SPLITS)
def test_every_shared_file_parses(shared_data, name, split, rows):
    task = get_task(name)
    examples = load_split(task, split, shared_data)
    assert len(examples) == rows
    if task.label_texts:
        assert {e.target for e in examples} <= set(task.label_texts)
    if name == "wsc":
        assert all(e.source.count(" * ") >= 1 and e.source.count("#") >= 2 for e in examples)


def test_glue_and_superglue_rte_agree_on_labels(shared_data):
    glue, superglue = load_split("rte", "train", shared_data), load_split("superglue-rte", "train", shared_data)
    assert [e.target for e in glue] == [e.target for e in superglue]


@pytest.mark.parametrize("content", [
    "index\tsentence\n0\tOur friends won't buy it.\n",  # GLUE's CoLA test.tsv: a header, no label
    "gj04\t1\t\tOur friends won't buy it.\n",  # the headerless train/dev layout
])
def test_cola_prediction_inputs_read_both_glue_layouts(tmp_path, content):
    """CoLA's test.tsv has a header (index, sentence) where train/dev have none; it was read as
    headerless ("2 fields, expected 4")."""
    from compacter.tasks.data import file_rows

    (tmp_path / "test.tsv").write_text(content)
    [(where, row)] = list(file_rows(get_task("cola"), tmp_path / "test.tsv", labels=False))
    assert row["sentence"] == "Our friends won't buy it." and where.endswith("test.tsv:" + str(content.count("\n")))
