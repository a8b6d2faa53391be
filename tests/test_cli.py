"""The compacter command: help for every subcommand, params from a config alone, errors."""


import json
import re
from pathlib import Path

import pytest
import torch
import transformers as T

import compacter

from compacter.cli import build_parser, main, parse_key_values


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "params", "report"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert command in out and "usage" in out


def test_train_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--batch-size", "--learning-rate", "--train-samples", "--mixed-precision", "--early-stopping", "--compile",
                 "--resume", "--eval-every", "--data-dir", "--adapter"):
        assert flag in out


def test_params_from_t5_base_shapes(capsys):
    assert main(["params", "--model", "t5-base-shapes", "--methods", "compacter++", "compacter"]) == 0
    out = capsys.readouterr().out
    assert "| compacter++ | 104,704 |" in out and "| compacter | 161,728 |" in out


def test_params_from_a_config_folder(tmp_path, capsys):
    T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128).save_pretrained(tmp_path)
    assert main(["params", "--model", str(tmp_path), "--methods", "pfeiffer", "--adapter", "reduction_factor=4"]) == 0
    out = capsys.readouterr().out
    # 2 layers x (64*16*2 + 16 + 64) + 2 layers x 2 norms x 128 + embeddings norm 128 + head (64*2+2)
    assert f"| pfeiffer | {2 * (64 * 16 * 2 + 16 + 64) + 5 * 128 + 130:,} |" in out


def test_params_by_default_counts_every_method_the_model_can_hold(tmp_path, capsys):
    """adapterdrop leaves no layer of a 3-layer model: the default table names it in a note and
    counts the others; asked for by name, it is an error naming why."""
    T.BertConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128).save_pretrained(tmp_path)
    assert main(["params", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"| {m} |" in out for m in compacter.METHODS if m != "adapterdrop") and "| adapterdrop |" not in out
    assert "(not on this model: adapterdrop: drop_first_layers=5 leaves no attention site" in out
    assert main(["params", "--model", str(tmp_path), "--methods", "adapterdrop"]) == 2
    assert "drop_first_layers=5 leaves no attention site" in capsys.readouterr().err


def test_bad_input_gets_an_error_not_a_traceback(capsys):
    assert main(["train", "--task", "nosuchtask", "--model", "x", "--no-progress"]) == 2
    assert "nosuchtask" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method", "lora"])


@pytest.mark.parametrize("item,match", [
    ("head_modules=null", "head_modules must be a list of non-empty strings"),
    ("nosuchkey=1", r"unknown field\(s\) nosuchkey; allowed: "),
    ("phm_dim=1", "phm_dim must be at least 2"),
])
def test_train_names_a_bad_adapter_override_before_loading_anything(item, match, monkeypatch, capsys):
    """A CompacterConfig error surfaced only after the data and the model were loaded (head_modules=null:
    a TypeError traceback from inside add_adapters), without naming --adapter."""
    import compacter.training as training

    def loads_nothing(*a, **k):
        raise AssertionError("data or model loaded before the options were checked")

    monkeypatch.setattr(training, "train", loads_nothing)
    assert main(["train", "--task", "demo", "--adapter", item, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid training options:\n  - --adapter: ")
    assert re.search(match, err)


def test_train_passes_peer_options_through_unchecked(monkeypatch):
    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    assert main(["train", "--method", "peft-lora", "--adapter", "r=16"]) == 0
    assert seen[0].adapter == {"r": 16}


def test_params_names_a_bad_adapter_override(capsys):
    assert main(["params", "--model", "t5-base-shapes", "--adapter", "head_modules=null", "--methods", "compacter"]) == 2
    assert capsys.readouterr().err.startswith("error: --adapter head_modules=null (with method compacter): invalid CompacterConfig:\n"
                                              "  - head_modules must be a list")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_parser_flags_map_to_train_config():
    from compacter.training import TrainConfig
    import dataclasses

    args = build_parser().parse_args(["train", "--batch-size", "8", "--text-columns", "a", "b", "--no-resume", "--adapter", "phm_dim=8"])
    assert args.batch_size == 8 and args.text_columns == ["a", "b"] and args.resume is False and args.adapter == ["phm_dim=8"]
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(args))


def test_parse_key_values_reads_python_constants():
    """train_layer_norms=False was the text 'False', refused as not a bool."""
    assert parse_key_values(["train_layer_norms=False", "learn_phm=True", "bottleneck_dim=None", "x=Falsey"]) == {
        "train_layer_norms": False, "learn_phm": True, "bottleneck_dim": None, "x": "Falsey"}


def test_parse_key_values_reads_json_values_and_normalizes_dashes():
    assert parse_key_values(["reduction_factor=16", "phm-dim=4", "non_linearity=gelu", "shared_phm_rule=false"]) == {
        "reduction_factor": 16, "phm_dim": 4, "non_linearity": "gelu", "shared_phm_rule": False}
    assert parse_key_values(None) == {}


@pytest.mark.parametrize("item", ["reduction_factor", "=16"])
def test_parse_key_values_rejects_items_without_key_and_value(item):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_key_values([item])


@pytest.mark.parametrize("argv,expected", [
    ([], {"task": "demo", "epochs": 10, "batch_size": 16, "learning_rate": 1e-2, "method": "compacter++"}),
    (["--method", "full"], {"task": "demo", "epochs": 10, "batch_size": 16, "learning_rate": None, "method": "full"}),
    (["--learning-rate", "3e-3", "--epochs", "2"], {"epochs": 2, "learning_rate": 3e-3}),
    (["--task", "rte"], {"task": "rte", "epochs": 20, "batch_size": 32, "learning_rate": None}),
    (["--max-grad-norm", "none"], {"max_grad_norm": None}),
    (["--max-grad-norm", "0.5"], {"max_grad_norm": 0.5}),
    ([], {"max_grad_norm": 1.0}),
])
def test_demo_defaults_apply_only_where_they_belong(monkeypatch, argv, expected):
    """The demo task gets its short schedule; only the default method gets the demo's 1e-2, a named
    method keeps its paper rate, and a real task gets the paper's settings."""
    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    assert main(["train", *argv]) == 0
    config = seen[0]
    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize("text,expected", [
    ('{"epochs": 3,\n "seed": }', r"c\.json: not valid JSON at line 2, column 10"),
    ('[{"epochs": 3}]', r"c\.json: expected a JSON object of training options .*got a list"),
    ('{"epochs": "3", "resume": "false", "compile": "no"}', r"c\.json: invalid training options:\n"
     r"  - --epochs \(epochs\) must be a whole number, got '3' \(a string\)\n"
     r"  - --compile \(compile\) must be true or false, got 'no' \(a string\)\n"
     r"  - --resume \(resume\) must be true or false, got 'false'"),
    ('{"epoch": 3}', r"c\.json: invalid training options:\n  - unknown training option 'epoch' \(did you mean 'epochs'\?\)"),
    ('{"batch_size": 0}', r"c\.json with the flags given: invalid training options:\n  - --batch-size must be at least 1"),
])
def test_a_bad_config_file_is_an_error_naming_the_file_not_a_traceback(tmp_path, monkeypatch, capsys, text, expected):
    import re

    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    (tmp_path / "c.json").write_text(text)
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert not seen and "Traceback" not in err


def test_config_file_null_adapter_merges_with_adapter_flags(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    (tmp_path / "c.json").write_text('{"adapter": null, "epochs": 2}')
    assert main(["train", "--config", str(tmp_path / "c.json"), "--adapter", "phm_dim=8"]) == 0
    assert seen[0].adapter == {"phm_dim": 8} and seen[0].epochs == 2


def test_resume_and_progress_come_from_the_flags_not_from_a_config_file(tmp_path, monkeypatch):
    """A run started with --no-resume kept "resume": false in its config.json (versions before this
    one), and `train --config` read it back: the run it was to resume was started over."""
    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    (tmp_path / "c.json").write_text('{"epochs": 2, "resume": false, "progress": false}')
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 0
    assert (seen[0].epochs, seen[0].resume, seen[0].progress) == (2, True, True)
    assert main(["train", "--config", str(tmp_path / "c.json"), "--no-resume", "--no-progress"]) == 0
    assert (seen[1].resume, seen[1].progress) == (False, False)


def test_a_relative_path_in_a_config_file_that_is_not_here_says_where_it_was_recorded(tmp_path, monkeypatch, capsys):
    _no_loading(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text('{"task": "rte", "data_dir": "../shared/data"}')
    assert main(["train", "--config", "c.json", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: c.json records data_dir '../shared/data', a path relative to the folder that run was started in")
    assert str(tmp_path.parent / "shared" / "data") in err and "give --data-dir" in err, err


def test_ctrl_c_before_any_checkpoint_says_so_without_a_traceback(tmp_path, monkeypatch, capsys):
    def interrupt(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("compacter.training.train", interrupt)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    try:
        rc = main(["train", "--output-dir", str(tmp_path / "run")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI (a traceback)")
    assert rc == 130
    assert capsys.readouterr().err == (f"interrupted: no checkpoint was written yet in {tmp_path / 'run'}; "
                                       "rerunning the same command starts the run again\n")


RUNS = Path(__file__).resolve().parents[1] / "docs" / "results" / "runs"


def test_every_committed_run_config_still_loads():
    """The recorded runs' config.json must stay valid for `train --config` (repeat or resume them)."""
    from compacter.cli import read_config_file
    from compacter.training import TrainConfig

    files = sorted(RUNS.glob("**/config.json"))
    assert len(files) > 100
    for file in files:
        cfg = TrainConfig.from_dict(read_config_file(str(file)))
        assert cfg.to_dict() == {**cfg.to_dict(), **json.loads(file.read_text())}, file


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("size", ["0", "-1", "two"])
def test_evaluate_and_predict_refuse_a_batch_size_below_one(command, size, capsys):
    """--batch-size -1 printed nothing and exited 0; 0 failed with "range() arg 3 must not be zero"."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "no/such/adapter", "--batch-size", size])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and ("at least 1" in err), err


# --- predict: inputs formatted as in training ---

WSC_RELEASE = {"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
               "target": {"span1_index": 2, "span1_text": "Pete", "span2_index": 19, "span2_text": "He"}, "idx": 0, "label": False}
WSC_HUB = {"text": "The trophy does not fit in the suitcase because it is too big.",
           "span1_index": 1, "span1_text": "trophy", "span2_index": 9, "span2_text": "it", "idx": 1}
MULTIRC_PASSAGE = {"idx": 7, "passage": {"text": "<b>Sent 1: </b>Tom ran home.<br><b>Sent 2: </b>He ate.<br>", "questions": [
    {"idx": 30, "question": "Who ran?", "answers": [{"idx": 0, "text": "Tom", "label": 1}, {"idx": 1, "text": "<b>Ann</b>", "label": 0}]},
    {"idx": 31, "question": "What did he do?", "answers": [{"idx": 2, "text": "ate", "label": 1}]}]}}


@pytest.fixture(scope="module")
def wsc_adapter(tmp_path_factory):
    """A run folder with an untrained Compacter++ adapter on a tiny BERT, trained-for task: WSC."""
    from compacter import CompacterConfig, add_adapters, save_adapters
    from compacter.modeling import load_model
    from compacter.tasks import get_task

    from .training.conftest import make_model_dir

    root = tmp_path_factory.mktemp("wsc-run")
    model = make_model_dir(root / "model", "encoder")
    net = load_model(model, "encoder", get_task("wsc"))
    add_adapters(net, CompacterConfig("compacter++", reduction_factor=4))
    save_adapters(net, root / "run" / "best")
    (root / "run" / "config.json").write_text(json.dumps({"model": model, "task": "wsc"}))
    return str(root / "run" / "best")


@pytest.fixture
def predicted(monkeypatch):
    """The examples predict hands to the model (the real predict_batch still runs)."""
    import compacter.modeling as modeling

    seen, real = [], modeling.predict_batch
    monkeypatch.setattr(modeling, "predict_batch", lambda net, batcher, examples, *a: seen.extend(examples) or real(net, batcher, examples, *a))
    return seen


def _unlabeled(row):
    """`row` without any label (top level, nested MultiRC answers)."""
    row = {k: v for k, v in row.items() if k != "label"}
    if isinstance(row.get("passage"), dict):
        row["passage"] = {**row["passage"], "questions": [
            {**q, "answers": [{k: v for k, v in a.items() if k != "label"} for a in q["answers"]]} for q in row["passage"]["questions"]]}
    return row


def test_predict_marks_wsc_spans_as_training_does(wsc_adapter, predicted, tmp_path, capsys):
    """predict joined the raw text: no ` * ` / ` # ` around the noun and pronoun the model was trained with."""
    from compacter.tasks import get_task

    task = get_task("wsc")
    rows = [WSC_RELEASE, _unlabeled(WSC_HUB), {**WSC_HUB, "label": "not a label"}]  # a label given is ignored
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    capsys.readouterr()
    assert main(["predict", wsc_adapter, "--file", str(tmp_path / "in.jsonl")]) == 0
    training = [task.format(r)[0] for r in (WSC_RELEASE, {**WSC_HUB, "label": 1}, {**WSC_HUB, "label": 1})]
    assert [e.source for e in predicted] == [e.source for e in training]
    assert [e.fields for e in predicted] == [e.fields for e in training]
    assert predicted[0].source == ("text: Mark told * Pete * many lies about himself, which Pete included in his book. "
                                   "# He # should have been more skeptical.")
    assert {(e.target, e.label) for e in predicted} == {("", None)}
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["input"] for line in lines] == rows  # the output keys of a one-example task are unchanged
    assert all(line["label"] in ("False", "True") and line["prediction"] in ("0", "1") for line in lines)


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "text\n")])
def test_predict_says_an_empty_file_has_no_rows(wsc_adapter, tmp_path, capsys, name, text):
    """An empty --file was told "give --text (repeatable) or --file", with --file given."""
    (tmp_path / name).write_text(text)
    assert main(["predict", wsc_adapter, "--file", str(tmp_path / name)]) == 2
    assert capsys.readouterr().err.endswith(f"\nerror: --file {tmp_path / name}: no input rows in it (an empty file?)\n")


def test_predict_gives_a_line_per_multirc_answer(wsc_adapter, predicted, capsys):
    """A release-layout MultiRC passage without labels: one example per answer, markup removed, each line
    naming its input row, group and fields."""
    from compacter.tasks import get_task

    capsys.readouterr()
    argv = ["predict", wsc_adapter, "--task", "multirc", "--text", json.dumps(_unlabeled(MULTIRC_PASSAGE)),
            "--text", json.dumps({"question": "Who ate?", "answer": "<b>Tom</b>", "paragraph": "Tom ate.<br>"})]
    assert main(argv) == 0
    training = get_task("multirc").format(MULTIRC_PASSAGE)
    assert [e.source for e in predicted[:3]] == [e.source for e in training]
    assert predicted[3].source == "question: Who ate? answer: Tom paragraph: Tom ate. "
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["row"], line["group"], line["fields"]["answer"]) for line in lines] == [
        (0, "7-30", "Tom"), (0, "7-30", "Ann"), (0, "7-31", "ate"), (1, None, "Tom")]
    assert all(line["label"] in ("False", "True") for line in lines)


@pytest.mark.parametrize("name,text", [
    ("test.tsv", "index\tsentence1\tsentence2\n0\tA man sleeps.\tSomeone sleeps.\n"),  # GLUE's test layout: no label
    ("in.csv", "sentence1,sentence2\nA man sleeps.,Someone sleeps.\n"),
])
def test_predict_reads_tables_without_a_label_column(wsc_adapter, predicted, tmp_path, capsys, name, text):
    """--file needs no labels: a .tsv/.csv without the label column was refused ("missing column(s) ['label']")."""
    (tmp_path / name).write_text(text)
    capsys.readouterr()
    assert main(["predict", wsc_adapter, "--task", "rte", "--file", str(tmp_path / name)]) == 0
    assert [e.source for e in predicted] == ["sentence1: A man sleeps. sentence2: Someone sleeps."]
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["label"] in ("entailment", "not_entailment")


@pytest.mark.parametrize("argv,where", [
    (["--text", "The city councilmen refused the demonstrators a permit because they feared violence."], r"input 0 \(--text 1\)"),
    (["--text", json.dumps(WSC_HUB), "--file", "IN"], r"input 2 \(.*in\.jsonl:2\)"),
])
def test_predict_names_the_input_wsc_cannot_read(wsc_adapter, predicted, tmp_path, capsys, argv, where):
    """WSC needs its spans: plain text was predicted on, unmarked, as if it were a training input."""
    import re

    (tmp_path / "in.jsonl").write_text(json.dumps(WSC_HUB) + "\n" + json.dumps({"text": "No spans here."}) + "\n")
    argv = [str(tmp_path / "in.jsonl") if a == "IN" else a for a in argv]
    assert main(["predict", wsc_adapter, *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(where, err), err
    assert "missing field 'span1_text'" in err and "span1_text, span1_index, span2_text, span2_index" in err, err
    assert not predicted  # nothing was predicted before the bad input was found


def test_a_quoted_tilde_model_path_says_it_is_not_expanded(tmp_path, monkeypatch, capsys):
    """'~/minilm' that exists once expanded was called "no such file or folder (/home/.../minilm)"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "minilm").mkdir()
    assert main(["train", "--model", "~/minilm", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'~' is not expanded here" in err and str(tmp_path / "minilm") in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["./minilm", "../models/minilm", "/no/such/minilm", "~/minilm", "models/minilm/v2"])
def test_train_names_a_missing_local_model_before_writing_anything(model, tmp_path, monkeypatch, capsys):
    """A local-looking --model that does not exist used to reach transformers as a repo id
    ("OSError: Repo id must use alphanumeric chars"); now it is an error naming the option and the path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["train", "--model", model, "--task", "demo", "--output-dir", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--model {model}: no such file or folder" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing else


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_name_a_missing_local_model(command, wsc_adapter, capsys):
    extra = ["--text", "x"] if command == "predict" else []
    assert main([command, wsc_adapter, "--model", "./no-such-model", *extra]) == 2
    assert "--model ./no-such-model: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["t5-small", "google-t5/t5-base", "sentence-transformers/all-MiniLM-L6-v2"])
def test_hub_ids_still_go_to_transformers(model, tmp_path, monkeypatch, capsys):
    from compacter.modeling import check_model_path

    monkeypatch.chdir(tmp_path)
    check_model_path(model)  # no error: not found here, so transformers tries the Hub, as before
    asked = []

    def from_pretrained(name, *a, **k):
        asked.append(name)
        raise OSError("offline")

    monkeypatch.setattr(T.AutoConfig, "from_pretrained", from_pretrained)
    assert main(["train", "--model", model, "--task", "demo", "--output-dir", "run", "--no-progress"]) == 2
    assert asked == [model]
    assert capsys.readouterr().err == f"error: --model {model}: cannot read the model's config (offline)\n"


def _no_loading(monkeypatch):
    import compacter.training as training

    def fail(*a, **k):
        raise AssertionError("data or model loaded before the problem was found")

    monkeypatch.setattr(training, "load_splits", fail)
    monkeypatch.setattr(training, "load_model", fail)


@pytest.mark.parametrize("output_dir,problem", [
    ("afile", "--output-dir afile: it is a file, not a folder"),
    ("afile/sub/run", "--output-dir afile/sub/run: {tmp}/afile is a file, not a folder"),
])
def test_train_names_an_output_dir_that_cannot_be_a_folder_before_loading(output_dir, problem, tmp_path, monkeypatch, capsys):
    """A file as --output-dir (or above it) was a FileExistsError/NotADirectoryError traceback, after
    the data and the model had been loaded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    _no_loading(monkeypatch)
    assert main(["train", "--task", "demo", "--output-dir", output_dir, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {problem.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("resume", [[], ["--no-resume"]])
@pytest.mark.parametrize("files", [{"best/notes.txt": "mine"}, {"config.json": '{"model_type": "bert"}', "model.safetensors": "w"}])
def test_train_refuses_a_folder_of_other_files_before_loading(files, resume, tmp_path, monkeypatch, capsys):
    """A folder that is not a run (a user's best/, a model folder's config.json) had its best/
    deleted and its config.json overwritten."""
    for name, text in files.items():
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_text(text)
    _no_loading(monkeypatch)
    assert main(["train", "--task", "demo", "--output-dir", str(tmp_path / "out"), "--no-progress", *resume]) == 2
    assert "is not a compacter run folder" in capsys.readouterr().err
    assert {str(p.relative_to(tmp_path / "out")): p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()} == files


def test_train_names_an_output_dir_it_cannot_create_before_loading(tmp_path, monkeypatch, capsys):
    """(/sys/run as root: PermissionError traceback after loading; here the refusal is simulated.)"""
    import tempfile

    def refuse(*a, dir=None, **k):
        raise PermissionError(1, "Operation not permitted", dir)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    _no_loading(monkeypatch)
    assert main(["train", "--task", "demo", "--output-dir", str(tmp_path / "a" / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"error: --output-dir {tmp_path / 'a' / 'run'}: cannot create folders in {tmp_path} "
                                       "(Operation not permitted)\n")
    assert list(tmp_path.iterdir()) == []


def test_the_output_dir_check_leaves_nothing_behind(tmp_path):
    from compacter.training import _check_output_dir

    _check_output_dir(tmp_path / "new" / "run")
    (tmp_path / "old").mkdir()
    _check_output_dir(tmp_path / "old")
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and not any((tmp_path / "old").iterdir())


@pytest.mark.parametrize("command", ["train", "params"])
@pytest.mark.parametrize("content", ["{not json", "text,label\ngood,pos\n"])
def test_a_model_whose_config_cannot_be_read_is_named(command, content, tmp_path, monkeypatch, capsys):
    """A --model whose config.json is not JSON, or a data file given as --model: an OSError traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(content)
    (tmp_path / "train.csv").write_text(content)
    for model in ("model", "train.csv"):
        _no_loading(monkeypatch)
        argv = ["train", "--task", "demo", "--output-dir", "run", "--no-progress"] if command == "train" else ["params"]
        assert main([*argv, "--model", model]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --model {model}: cannot read the model's config (") and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_params_names_a_missing_local_model(capsys):
    """params never checked the path: './no-such-model' reached transformers as a repo id (an OSError traceback)."""
    assert main(["params", "--model", "./no-such-model", "--methods", "compacter"]) == 2
    assert capsys.readouterr().err.startswith("error: --model ./no-such-model: no such file or folder")


def test_other_os_errors_are_errors_not_tracebacks(monkeypatch, capsys):
    def unreadable(args):
        raise IsADirectoryError(21, "Is a directory", "inputs")

    monkeypatch.setattr("compacter.cli.cmd_report", unreadable)
    assert main(["report", "runs"]) == 2
    assert capsys.readouterr().err == "error: [Errno 21] Is a directory: 'inputs'\n"


# --- evaluate / predict: peer runs, damaged checkpoints, run directories, splits; usage errors ---


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """Tiny PEFT LoRA runs (encoder: with the new head in modules_to_save; seq2seq), trained on the demo task."""
    pytest.importorskip("peft")
    from compacter.training import TrainConfig, train

    from .training.conftest import make_model_dir

    root = tmp_path_factory.mktemp("lora-runs")
    runs = {}
    for family in ("encoder", "seq2seq"):
        model = make_model_dir(root / f"model-{family}", family)
        cfg = TrainConfig(task="demo", model=model, method="peft-lora", adapter={"r": 4}, batch_size=8, max_steps=4, eval_every=2,
                          max_eval_samples=16, learning_rate=1e-2, progress=False, output_dir=str(root / family))
        runs[family] = (root / family, train(cfg, log=lambda *a: None))
    return runs


@pytest.mark.parametrize("family", ["encoder", "seq2seq"])
def test_evaluate_and_predict_read_a_peft_lora_run(lora_runs, family, capsys):
    """`compacter evaluate <peft-lora run>/best` said "no adapter config here" beside its peer_config.json:
    now it rebuilds the peer as the run did, loads its tensors, and scores what results.json says."""
    from safetensors.torch import load_file

    from compacter.cli import _load_adapted
    from compacter.peers import PEER_WEIGHTS, trained_tensors

    run, results = lora_runs[family]
    for split in ("test", "validation"):
        capsys.readouterr()
        assert main(["evaluate", str(run / "best"), "--split", split]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["score"] == pytest.approx(results[split]["score"]), split
    net, *_ = _load_adapted(str(run / "best"), None, None)
    saved, loaded = load_file(run / "best" / PEER_WEIGHTS), trained_tensors(net)
    assert sorted(saved) == sorted(loaded) and any("lora_A" in k for k in saved)
    assert all(torch.equal(saved[k], loaded[k].detach()) for k in saved)
    capsys.readouterr()
    assert main(["predict", str(run / "best"), "--text", "The soup was great."]) == 0
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["input"] == {"sentence": "The soup was great."} and line["prediction"]  # an untrained T5 generates any text


def test_a_peer_checkpoint_out_of_its_run_or_damaged_is_a_clear_error(lora_runs, tmp_path, capsys):
    import shutil

    from compacter.peers import PEER_WEIGHTS

    from .core.test_checkpoint import _damage

    run, _ = lora_runs["encoder"]
    shutil.copytree(run / "best", tmp_path / "alone")
    assert main(["evaluate", str(tmp_path / "alone")]) == 2
    assert "a peft-lora peer checkpoint records only its method; its options (--adapter), model and task are in its " \
           "run's config.json" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("last"))
    key = _damage(tmp_path / "run" / "best", PEER_WEIGHTS)
    assert main(["predict", str(tmp_path / "run" / "best"), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / 'best' / PEER_WEIGHTS}: damaged: NaN or infinite values in {key} (" in err, err


def test_a_damaged_adapter_is_refused_not_scored(wsc_adapter, tmp_path, capsys):
    """NaN layer norms loaded silently: evaluate printed the untrained score with exit status 0."""
    import shutil

    from .core.test_checkpoint import _damage

    shutil.copytree(Path(wsc_adapter).parent, tmp_path / "run")
    key = _damage(tmp_path / "run" / "best", "adapter_model.safetensors")
    assert main(["predict", str(tmp_path / "run" / "best"), "--text", json.dumps(WSC_HUB)]) == 2
    assert f"adapter_model.safetensors: damaged: NaN or infinite values in {key} (" in capsys.readouterr().err


def test_evaluate_of_a_run_directory_names_its_best_folder(wsc_adapter, capsys):
    run = Path(wsc_adapter).parent
    assert main(["evaluate", str(run)]) == 2
    assert f"{run} is a run directory: its best adapter is {run / 'best'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--adapter", "reduction_factor"], "argument --adapter: expected KEY=VALUE, got 'reduction_factor'"),
    (["params", "--model", "t5-base-shapes", "--adapter", "=16"], "argument --adapter: expected KEY=VALUE, got '=16'"),
    (["predict", "ADAPTER"], "give --text (repeatable) or --file"),
    (["predict", "ALONE", "--text", "x"], "--task is required (the adapter folder is not inside a run directory)"),
])
def test_usage_errors_exit_2_with_the_usage(wsc_adapter, tmp_path, argv, message, capsys):
    """`--adapter x` and `predict` without inputs exited 1 (a bare SystemExit), other usage errors 2 (argparse)."""
    import shutil

    shutil.copytree(wsc_adapter, tmp_path / "alone")
    argv = [{"ADAPTER": wsc_adapter, "ALONE": str(tmp_path / "alone")}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: compacter {argv[0]}") and f"compacter {argv[0]}: error: {message}" in err, err


def test_one_adapter_flag_takes_several_items(monkeypatch):
    """The help's example `phm_dim=8 reduction_factor=16` after one --adapter was a usage error."""
    seen = []
    monkeypatch.setattr("compacter.training.train", seen.append)
    monkeypatch.setattr("compacter.training.end_distributed", lambda: False)
    assert main(["train", "--adapter", "phm_dim=8", "reduction_factor=16", "--adapter", "phm_dim=4", "--no-progress"]) == 0
    assert seen[0].adapter == {"phm_dim": 4, "reduction_factor": 16}  # the flag repeated: the last value wins


def test_train_help_shows_no_none_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "your own training file (.csv, .tsv, .jsonl) --validation-file" in out
    assert "e.g. --adapter phm_dim=8 reduction_factor=16" in out


def _run_on_files(root, files: dict, **options):
    """A run folder (untrained adapter, config.json) on the user's own files: the demo's rows as JSON lines."""
    from compacter import CompacterConfig, add_adapters, save_adapters
    from compacter.modeling import load_model
    from compacter.tasks import get_task, load_split

    from .training.conftest import make_model_dir

    rows = [e for split in ("train", "validation", "test") for e in load_split("demo", split)]
    names = ("negative", "positive")
    at = 0
    for name, n in files.items():
        lines = [json.dumps({"text": e.fields["sentence"], "label": names[e.label]}) for e in rows[at:at + n]]
        (root / name).write_text("\n".join(lines) + "\n")
        at += n
    model = make_model_dir(root / "model", "encoder")
    net = load_model(model, "encoder", get_task("demo"))
    add_adapters(net, CompacterConfig("compacter++", reduction_factor=4))
    save_adapters(net, root / "run" / "best")
    config = {"model": model, "task": "mine", "text_columns": ["text"], "label_names": list(names),
              **{f"{split}_file": str(root / f"{split}.jsonl") for split in ("train", "validation", "test")
                 if f"{split}.jsonl" in files}, **options}
    (root / "run" / "config.json").write_text(json.dumps(config))
    return root / "run" / "best"


@pytest.mark.parametrize("files", [{"train.jsonl": 40, "validation.jsonl": 20},
                                   {"train.jsonl": 40, "validation.jsonl": 10, "test.jsonl": 12}])
@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluate_needs_no_training_file_where_the_held_out_sets_do_not_come_from_it(tmp_path, files, split, capsys, monkeypatch):
    """evaluate read the training file (and failed without it) though these splits never come from it."""
    import compacter.training as training
    from compacter.cli import _own_split

    best = _run_on_files(tmp_path, files)
    own = training.TrainConfig.from_dict(json.loads((best.parent / "config.json").read_text()))
    expected = training.load_splits(own, training.resolve_task(own))[split]
    assert _own_split(own, training.resolve_task(own), split) == expected
    (tmp_path / "train.jsonl").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(best), "--split", split]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"task", "split", "accuracy", "score"}


def test_evaluate_says_why_held_out_sets_carved_from_training_need_that_file(tmp_path, capsys):
    best = _run_on_files(tmp_path, {"train.jsonl": 60})
    (tmp_path / "train.jsonl").unlink()
    assert main(["evaluate", str(best)]) == 2
    assert "the run held its validation and test examples out of its training file (it had no --validation-file), " \
           "so scoring them needs that file" in capsys.readouterr().err


def test_evaluate_scores_a_benchmark_test_split_without_its_training_file(wsc_adapter, tmp_path, capsys):
    """RTE's test split is half of dev.tsv: a data dir without train.tsv was an error."""
    import shutil

    from .tasks.test_splits import _glue_dir

    shutil.copytree(Path(wsc_adapter).parent, tmp_path / "run")
    data_dir = _glue_dir(tmp_path / "data", ("RTE",))
    (data_dir / "glue" / "RTE" / "train.tsv").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run" / "best"), "--task", "rte", "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "rte"
