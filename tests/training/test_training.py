"""End-to-end training on tiny models of each family: files, selection, resume, divergence, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

import compacter.training as training
from compacter.checkpoint import WEIGHTS_NAME
from compacter.cli import main
from compacter.training import TrainConfig, TrainingDiverged, epoch_batches, train

FAST = dict(task="demo", batch_size=8, max_steps=6, eval_every=3, max_eval_samples=16, progress=False, method="compacter++",
            adapter={"reduction_factor": 4}, learning_rate=1e-2)


def _cfg(model_dirs, family, tmp_path, **kw):
    return TrainConfig(**{**FAST, "model": model_dirs[family], "output_dir": str(tmp_path / f"run-{family}"), **kw})


@pytest.mark.parametrize("family", ["seq2seq", "encoder", "decoder"])
def test_train_writes_a_complete_run_directory(model_dirs, family, tmp_path):
    cfg = _cfg(model_dirs, family, tmp_path)
    results = train(cfg, log=lambda *a: None)
    run = tmp_path / f"run-{family}"
    for name in ("config.json", "metrics.jsonl", "results.json", f"best/{WEIGHTS_NAME}", "last/train_state.safetensors"):
        assert (run / name).exists(), name
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(math.isfinite(e["train_loss"]) and e["train_loss"] > 0 for e in evals)  # mean loss since the last evaluation
    assert results["steps"] == 6 and results["best_step"] in (3, 6)
    assert results["best_step"] == max(evals, key=lambda e: e["score"])["step"]
    assert set(results["test"]) >= {"accuracy", "score"} and 0 <= results["test"]["score"] <= 100
    # config.json keeps the run's settings; resume and progress are flags of one command (their defaults here)
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == dataclasses.replace(cfg, progress=True)
    # evaluate and predict through the CLI, from the saved adapter alone
    assert main(["evaluate", str(run / "best"), "--split", "validation"]) == 0
    assert main(["predict", str(run / "best"), "--text", "The soup was great.", "--text", '{"sentence": "Awful service."}']) == 0


def test_evaluate_matches_the_training_runs_numbers(model_dirs, tmp_path, capsys):
    results = train(_cfg(model_dirs, "encoder", tmp_path), log=lambda *a: None)
    capsys.readouterr()
    main(["evaluate", str(tmp_path / "run-encoder" / "best"), "--split", "test"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["score"] == pytest.approx(results["test"]["score"])


def _adapter(run):
    return load_file(run / "best" / WEIGHTS_NAME), load_file(run / "last" / WEIGHTS_NAME)


@pytest.mark.parametrize("family", ["encoder", "seq2seq"])
def test_resume_after_a_crash_ends_like_an_uninterrupted_run(model_dirs, family, tmp_path, monkeypatch):
    full = _cfg(model_dirs, family, tmp_path / "a", eval_every=2, max_steps=6, eval_before=False)
    train(full, log=lambda *a: None)
    crashed = _cfg(model_dirs, family, tmp_path / "b", eval_every=2, max_steps=6, eval_before=False)
    real = training._evaluate_and_checkpoint
    calls = []

    def crash_after_second_checkpoint(*args, **kw):
        out = real(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(training, "_evaluate_and_checkpoint", crash_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(crashed, log=lambda *a: None)
    monkeypatch.setattr(training, "_evaluate_and_checkpoint", real)
    assert json.loads((tmp_path / "b" / f"run-{family}" / "last" / "train_state.json").read_text())["progress"]["step"] == 4
    logs = []
    train(crashed, log=logs.append)
    assert any("resumed" in line and "step 4" in line for line in logs)
    for a, b in zip(_adapter(tmp_path / "a" / f"run-{family}"), _adapter(tmp_path / "b" / f"run-{family}")):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_after_a_crash_inside_a_checkpoint_swap(model_dirs, tmp_path, monkeypatch):
    """Killed between moving last/ aside and moving the new one in: resume finds last.old."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, eval_every=2, max_steps=4)
    real_replace = training.os.replace

    def crash_in_second_swap(src, dst):
        if str(dst).endswith("last.old"):  # the second save of last/ (the first has nothing to move aside)
            real_replace(src, dst)
            raise KeyboardInterrupt("killed mid-swap")
        return real_replace(src, dst)

    monkeypatch.setattr(training.os, "replace", crash_in_second_swap)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda *a: None)
    monkeypatch.setattr(training.os, "replace", real_replace)
    run = tmp_path / "run-encoder"
    assert not (run / "last").exists() and (run / "last.old" / "train_state.json").exists()
    state = run / "last.old" / "train_state.json"
    saved = json.loads(state.read_text())
    assert saved["progress"]["seconds"] > 0 and saved["progress"]["before"] is not None
    saved["progress"]["seconds"] = 1000.0  # as if the steps before the crash had taken 1000 s
    assert saved["progress"]["eval_seconds"] == 0.0  # the first checkpoint: no validation had ended before it
    saved["progress"]["eval_seconds"] = 400.0  # 400 s of which validated
    state.write_text(json.dumps(saved))
    logs = []
    results = train(cfg, log=logs.append)
    assert any("resumed" in line and "step 2" in line for line in logs)
    assert results["steps"] == 4 and not (run / "last.old").exists()
    # the resumed run reports the whole run: the untrained model's scores and the time before the crash
    assert results["before"] == saved["progress"]["before"] and not any("before training" in line for line in logs)
    assert 1000 < results["train_seconds"] < 1000 + 600 and 400 < results["eval_seconds"] < 400 + 600


def _stamps(run):
    return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}


def test_a_finished_run_is_not_trained_again_in_its_folder(model_dirs, tmp_path):
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    before = _stamps(run)
    with pytest.raises(ValueError, match="holds a finished run .*step 2 of 2.*--output-dir"):
        train(cfg, log=lambda *a: None)
    assert main(["train", "--config", str(run / "config.json")]) == 2
    assert _stamps(run) == before  # nothing written, config.json included
    # more steps extend the finished run from last/
    assert train(dataclasses.replace(cfg, max_steps=4), log=lambda *a: None)["steps"] == 4
    # --no-resume starts over in the folder: the old run's evaluations and checkpoints go first
    logs = []
    assert train(dataclasses.replace(cfg, resume=False), log=logs.append)["steps"] == 2
    assert not any("resumed" in line for line in logs)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
    # results.json without last/ (deleted to save space) is a finished run too, not a fresh start
    shutil.rmtree(run / "last")
    before = _stamps(run)
    with pytest.raises(ValueError, match="finished run .*no last/"):
        train(cfg, log=lambda *a: None)
    assert _stamps(run) == before


def test_an_early_stopped_run_resumed_before_its_results_trains_no_further(model_dirs, tmp_path):
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=6, eval_every=1, early_stopping=1, learning_rate=1e-12,
               eval_before=False)
    first = train(cfg, log=lambda *a: None)
    assert first["steps"] < 6  # stopped early: the score cannot improve at this learning rate
    (tmp_path / "run-encoder" / "results.json").unlink()  # killed while testing best/
    assert train(cfg, log=lambda *a: None)["steps"] == first["steps"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(model_dirs, tmp_path, monkeypatch):
    real_load = training.load_model

    def poisoned(*args, **kw):
        model = real_load(*args, **kw)
        forward, calls = model.forward, []

        def nan_forward(*a, **k):
            out = forward(*a, **k)
            calls.append(1)
            if len(calls) == 5 and model.training:
                out.loss = out.loss * float("nan")
            return out

        model.forward = nan_forward
        return model

    monkeypatch.setattr(training, "load_model", poisoned)
    cfg = _cfg(model_dirs, "encoder", tmp_path, eval_every=2, eval_before=False)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 3 .*last good checkpoint"):
        train(cfg, log=lambda *a: None)
    state = json.loads((tmp_path / "run-encoder" / "last" / "train_state.json").read_text())
    assert state["progress"]["step"] == 2  # calls: train, train, eval (step 2 saved), train, train -> nan
    saved = load_file(tmp_path / "run-encoder" / "last" / WEIGHTS_NAME)
    assert all(torch.isfinite(t).all() for t in saved.values())


def test_an_overflowing_update_is_not_evaluated_or_saved(model_dirs, tmp_path):
    """--learning-rate 1e39 is finite, but its first update is inf in float32: the run saved the
    non-finite adapter as best/ and last/ and exited with 0."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, learning_rate=1e39, max_steps=1, eval_before=False)
    with pytest.raises(TrainingDiverged, match=r"trained parameters are not finite \(inf or NaN\) after step 1 .*"
                                               r"learning rate 1e\+39 .*no checkpoint was written"):
        train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    assert not any((run / name).exists() for name in ("best", "last", "results.json", "metrics.jsonl"))


def test_non_finite_parameters_keep_the_last_good_checkpoint(model_dirs, tmp_path, monkeypatch):
    real = training.adamw

    def poisoned(params, lr, weight_decay=0.0):
        optimizer, calls = real(params, lr, weight_decay), []

        def poison(*args):
            calls.append(1)
            if len(calls) == 4:  # the last step: the loss check never sees its result
                with torch.no_grad():
                    params[0].fill_(float("inf"))

        optimizer.register_step_post_hook(poison)
        return optimizer

    monkeypatch.setattr(training, "adamw", poisoned)
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=4, eval_every=2, eval_before=False)
    with pytest.raises(TrainingDiverged, match=r"not finite .* after step 4 .*last good checkpoint is kept in .*last"):
        train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    assert json.loads((run / "last" / "train_state.json").read_text())["progress"]["step"] == 2
    for folder in ("best", "last"):
        assert all(torch.isfinite(t).all() for t in load_file(run / folder / WEIGHTS_NAME).values())
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
    assert not (run / "results.json").exists()


def test_cli_reports_a_diverged_run_as_an_error_not_a_traceback(monkeypatch, capsys):
    def diverge(cfg, log=print):
        raise TrainingDiverged("loss is nan at step 3 (epoch 0, batch 4); the last good checkpoint is kept in x")

    monkeypatch.setattr(training, "train", diverge)
    assert main(["train", "--task", "demo", "--max-steps", "1"]) == 1
    assert capsys.readouterr().err.startswith("error: loss is nan at step 3")


def test_epoch_batches_shard_one_global_order():
    single = epoch_batches(40, 3, seed=7, batch_size=8, rank=0, world=1)
    r0 = epoch_batches(40, 3, seed=7, batch_size=4, rank=0, world=2)
    r1 = epoch_batches(40, 3, seed=7, batch_size=4, rank=1, world=2)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(s) for s in single]
    assert epoch_batches(40, 4, seed=7, batch_size=8, rank=0, world=1) != single


@pytest.mark.parametrize("n,batch_size,world,sizes", [
    (250, 100, 1, [[100, 100, 50]]),  # CB at the paper's batch: the last 50 train too (they were dropped)
    (5, 8, 1, [[5]]),  # smaller than one batch: one partial batch (it was an error)
    (21, 4, 2, [[4, 4, 3], [4, 4, 2]]),  # the last 5 split over the processes
    (17, 4, 2, [[4, 4, 1], [4, 4, 1]]),  # 1 left for 2 processes: filled up from the epoch's start
    (1, 4, 3, [[1], [1], [1]]),
])
def test_every_epoch_keeps_its_last_partial_batch(n, batch_size, world, sizes):
    """As the transformers Trainer (drop_last=False) and, on several processes, Accelerate's even_batches."""
    ranks = [epoch_batches(n, 2, seed=7, batch_size=batch_size, rank=r, world=world) for r in range(world)]
    assert [[len(b) for b in rank] for rank in ranks] == sizes
    single = epoch_batches(n, 2, seed=7, batch_size=batch_size * world, rank=0, world=1)
    order = [i for b in single for i in b]
    assert sorted(order) == list(range(n))  # one process: every example once
    for b, global_batch in enumerate(zip(*ranks)):
        together = [i for part in global_batch for i in part]
        assert len(together) == training.global_batch_size(n, b, batch_size, world)
        # the processes' slices are the one-process batch, the missing examples taken from the start of the epoch
        assert together == (single[b] + order * world)[:len(together)]
    with pytest.raises(ValueError, match="training set is empty"):
        epoch_batches(0, 0, seed=0, batch_size=8, rank=0, world=1)


@pytest.mark.parametrize("bad,match", [
    (dict(method="lora"), "--method"), (dict(mixed_precision="fp8"), "--mixed-precision"), (dict(batch_size=0), "--batch-size"),
    (dict(decoder_predict="beam"), "--decoder-predict"), (dict(test_file="x.csv"), "need --train-file"),
    (dict(max_grad_norm=-1.0), "--max-grad-norm must be positive"), (dict(max_grad_norm=0.0), "--max-grad-norm"),
    (dict(learning_rate=0.0), "--learning-rate must be positive"), (dict(warmup_steps=-5), "--warmup-steps"),
    (dict(weight_decay=-0.1), "--weight-decay"), (dict(epochs="3"), r"--epochs \(epochs\) must be a whole number, got '3'"),
    (dict(seed=1.0), "--seed"), (dict(resume=0), "--resume"), (dict(dtype=None), "--dtype"),
    # non-finite rates trained an inf/NaN adapter and saved it as best/ with exit status 0
    (dict(learning_rate=math.inf), "--learning-rate must be positive and finite, got inf"),
    (dict(weight_decay=math.inf), "--weight-decay must be 0 or more and finite, got inf"),
    (dict(weight_decay=math.nan), "--weight-decay"),
    # out-of-range seeds failed inside numpy/accelerate without naming the option
    (dict(seed=-1), r"--seed must be between 0 and 2\*\*32 - 1, got -1"), (dict(seed=2**32), "--seed must be between"),
    (dict(split_seed=-1), r"--split-seed must be 0 or more, got -1"),
])
def test_bad_training_options(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_own_file_options_without_a_train_file_are_refused_each_by_name():
    """--task demo --text-columns foo bar --label-names x y z --label-column nope --task-kind generation
    trained the demo with exit status 0 and wrote the ignored options into config.json."""
    with pytest.raises(ValueError) as err:
        TrainConfig(task="demo", text_columns=["foo", "bar"], label_names=["x", "y", "z"], label_column="nope",
                    task_kind="generation")
    lines = str(err.value).splitlines()[1:]
    assert [line.split()[1] for line in lines] == ["--text-columns", "--label-names", "--label-column", "--task-kind"]
    assert all("describes your own data files and needs --train-file (task 'demo' reads its own)" in line for line in lines)
    TrainConfig(task="demo", label_column="label", task_kind="classification")  # the defaults, spelled out


@pytest.mark.parametrize("kind", ["regression", "generation"])
def test_label_names_only_for_classification(kind):
    with pytest.raises(ValueError, match=f"--label-names is for --task-kind classification, not '{kind}'"):
        TrainConfig(task="mine", train_file="mine.csv", text_columns=["text"], label_names=["a", "b"], task_kind=kind)
    TrainConfig(task="mine", train_file="mine.csv", text_columns=["text"], task_kind=kind)
    with pytest.raises(ValueError) as err:  # a label_names of the wrong type: one problem, not a second about its value
        TrainConfig(task="mine", train_file="mine.csv", text_columns=["text"], label_names="a", task_kind=kind)
    assert str(err.value).count("\n  - ") == 1 and "--label-names (label_names) must be" in str(err.value)


def test_options_of_the_wrong_type_are_refused_all_at_once():
    """A config.json's "resume": "false" used to resume and "compile": "no" to compile: a string is truthy."""
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"resume": "false", "epochs": 1.5, "batch_size": True, "compile": "no", "text_columns": "sentence",
                               "learning_rate": "3e-3", "adapter": ["r=4"]})
    lines = str(err.value).splitlines()[1:]
    for name, expected in (("resume", "true or false"), ("epochs", "a whole number"), ("batch-size", "a whole number"),
                           ("compile", "true or false"), ("text-columns", "a list of strings or null"),
                           ("learning-rate", "a number or null"), ("adapter", "an object")):
        assert any(line.startswith(f"  - --{name} ") and f"must be {expected}" in line for line in lines), (name, lines)
    assert len(lines) == 7


def test_options_of_the_right_type_keep_the_config_json_form():
    cfg = TrainConfig.from_dict({"learning_rate": 1, "weight_decay": 0, "max_grad_norm": None, "text_columns": ("a", "b"),
                                 "adapter": None, "model": None, "train_file": "mine.csv"})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float) and isinstance(cfg.weight_decay, float)
    assert cfg.text_columns == ["a", "b"] and cfg.adapter == {} and cfg.max_grad_norm is None
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _soup_csv(path, n, start=0):
    rows = ["text,label"] + [f'"Soup number {start + i} was {("awful", "great")[i % 2]}.",{("neg", "pos")[i % 2]}' for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_custom_csv_task(model_dirs, tmp_path, capsys):
    cfg = _cfg(model_dirs, "encoder", tmp_path, task="soup", train_file=_soup_csv(tmp_path / "train.csv", 40), text_columns=["text"],
               label_names=["neg", "pos"], max_steps=2, eval_every=1)
    results = train(cfg, log=lambda *a: None)
    assert results["task"] == "soup" and "accuracy" in results["test"]
    # evaluate and predict rebuild the run's own task and splits from its config.json
    capsys.readouterr()
    best = str(tmp_path / "run-encoder" / "best")
    assert main(["evaluate", best, "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(results["test"]["score"])
    assert main(["predict", best, "--text", "Soup number 7 was great."]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("neg", "pos")


@pytest.mark.parametrize("files", ["train", "train+validation", "train+test", "train+validation+test"])
def test_custom_files_never_evaluate_on_training_examples(tmp_path, files):
    paths = {"train_file": _soup_csv(tmp_path / "train.csv", 60)}
    if "validation" in files:
        paths["validation_file"] = _soup_csv(tmp_path / "validation.csv", 10, start=100)
    if "test" in files:
        paths["test_file"] = _soup_csv(tmp_path / "test.csv", 8, start=200)
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], **paths)
    splits = training.load_splits(cfg, training.resolve_task(cfg))
    texts = {name: [e.source for e in examples] for name, examples in splits.items()}
    assert all(texts.values())
    assert not set(texts["train"]) & (set(texts["validation"]) | set(texts["test"]))
    assert not set(texts["validation"]) & set(texts["test"])
    expected = {"train": (48, 6, 6), "train+validation": (60, 5, 5), "train+test": (54, 6, 8), "train+validation+test": (60, 10, 8)}
    assert tuple(len(splits[s]) for s in ("train", "validation", "test")) == expected[files]


def test_a_validation_file_too_small_to_halve_is_refused_before_training(tmp_path):
    paths = {"train_file": _soup_csv(tmp_path / "train.csv", 20), "validation_file": _soup_csv(tmp_path / "validation.csv", 1)}
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], **paths)
    with pytest.raises(ValueError, match=r"empty validation split from .*validation.csv .*validation 0, test 1"):
        training.load_splits(cfg, training.resolve_task(cfg))


def test_load_held_out_reads_no_training_file_and_needs_a_validation_file(tmp_path):
    paths = {"train_file": str(tmp_path / "absent.csv"), "validation_file": _soup_csv(tmp_path / "validation.csv", 10)}
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], **paths)
    held = training.load_held_out(cfg, training.resolve_task(cfg))
    assert [len(held["validation"]), len(held["test"])] == [5, 5]
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], train_file=paths["train_file"])
    with pytest.raises(ValueError, match="load_held_out needs --validation-file"):
        training.load_held_out(cfg, training.resolve_task(cfg))


@pytest.mark.parametrize("rows,test_file,problem", [
    (2, False, "2 example(s) are too few to hold out a validation and a test example and still train on the rest; "
               "give --validation-file (and --test-file), or more rows"),
    (1, True, "1 example(s) are too few to hold out a validation example and still train on the rest; "
              "give --validation-file, or more rows"),
])
def test_a_train_file_too_small_to_hold_out_from_names_it(tmp_path, rows, test_file, problem):
    """It was 'cannot carve 2 examples out of 2', naming neither the file nor a way out."""
    paths = {"train_file": _soup_csv(tmp_path / "train.csv", rows)}
    if test_file:
        paths["test_file"] = _soup_csv(tmp_path / "test.csv", 4, start=100)
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], **paths)
    with pytest.raises(ValueError) as err:
        training.load_splits(cfg, training.resolve_task(cfg))
    assert str(err.value) == f"--train-file {paths['train_file']}: {problem}"
    paths["train_file"] = _soup_csv(tmp_path / "train.csv", rows + 1)  # the smallest that splits
    cfg = TrainConfig(task="soup", text_columns=["text"], label_names=["neg", "pos"], **paths)
    assert len(training.load_splits(cfg, training.resolve_task(cfg))["train"]) == 1


def test_max_eval_samples_keeps_whole_groups():
    from compacter.tasks import Example
    rows = [Example("s", "0", 0, group=g) for g in ("q1", "q1", "q2", "q2", "q2", "q3")] + [Example("s", "0", 0)] * 2
    assert [len(training.first_examples(rows, n)) for n in (1, 2, 3, 4, 5, 6, 7, None, 99)] == [2, 2, 5, 5, 5, 6, 7, 8, 8]


def test_validation_time_is_counted_apart(model_dirs, tmp_path, monkeypatch):
    real = training._evaluate_and_checkpoint

    def slow(*args, **kw):
        time.sleep(0.5)
        return real(*args, **kw)

    monkeypatch.setattr(training, "_evaluate_and_checkpoint", slow)
    results = train(_cfg(model_dirs, "encoder", tmp_path, max_steps=4, eval_every=2, eval_before=False), log=lambda *a: None)
    assert 1.0 <= results["eval_seconds"] < results["train_seconds"]  # two validations, inside the training time


def test_bf16_autocast_runs(model_dirs, tmp_path):
    results = train(_cfg(model_dirs, "encoder", tmp_path, mixed_precision="bf16", max_steps=2, eval_every=2), log=lambda *a: None)
    assert results["steps"] == 2 and 0 <= results["test"]["score"] <= 100


def test_gradient_accumulation_matches_the_larger_batch(model_dirs, tmp_path):
    common = dict(max_steps=2, eval_every=2, eval_before=False)
    train(_cfg(model_dirs, "encoder", tmp_path / "big", batch_size=8, **common), log=lambda *a: None)
    train(_cfg(model_dirs, "encoder", tmp_path / "acc", batch_size=4, grad_accum=2, **common), log=lambda *a: None)
    big, acc = (load_file(tmp_path / name / "run-encoder" / "last" / WEIGHTS_NAME) for name in ("big", "acc"))
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-5)


def _fail_on_endless_epochs(monkeypatch, limit=20):
    calls = []
    real = training.epoch_batches

    def counted(*args, **kw):
        calls.append(1)
        if len(calls) > limit:
            raise RuntimeError("the training loop keeps rebuilding epochs")
        return real(*args, **kw)

    monkeypatch.setattr(training, "epoch_batches", counted)


def test_gradient_accumulation_ends_an_epoch_with_a_shorter_step(model_dirs, tmp_path, monkeypatch):
    """20 examples in batches of 4 = 5 batches; grad_accum 2: 3 steps per epoch, the 5th batch alone
    making the third, as in the transformers Trainer (it was skipped; before that, it looped forever
    waiting for a step that never came)."""
    _fail_on_endless_epochs(monkeypatch)
    cfg = _cfg(model_dirs, "encoder", tmp_path, batch_size=4, grad_accum=2, train_samples=20, epochs=2, max_steps=None,
               eval_every=None, eval_before=False)
    results = train(cfg, log=lambda *a: None)
    assert results["steps"] == 6
    evals = [json.loads(line) for line in (tmp_path / "run-encoder" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"]) for e in evals] == [(3, 1), (6, 2)]


@pytest.mark.parametrize("change", [dict(batch_size=4, grad_accum=3), dict(batch_size=16)])
def test_an_epoch_shorter_than_one_step_is_one_step(model_dirs, tmp_path, monkeypatch, change):
    """8 examples: 2 batches of 4 for 3 accumulation steps, or fewer than one batch of 16; both were
    refused. Each epoch is now one optimizer step of all 8 examples, as the transformers Trainer makes it."""
    _fail_on_endless_epochs(monkeypatch)
    cfg = _cfg(model_dirs, "encoder", tmp_path, train_samples=8, epochs=2, max_steps=None, eval_every=None,
               eval_before=False, **change)
    results = train(cfg, log=lambda *a: None)
    assert results["steps"] == 2 and results["train_examples"] == 8


def test_an_epochs_last_partial_batch_trains_like_the_larger_batch_with_accumulation(model_dirs, tmp_path):
    """12 examples, two epochs: batches of 8 (8, then the 4 left) and batches of 4 accumulated in
    twos (4 + 4, then 4 alone) take the same steps; the last one's loss is its one micro-batch's
    mean, not half of it (the transformers Trainer divides by the micro-batches the step has)."""
    common = dict(train_samples=12, epochs=2, max_steps=None, eval_every=None, eval_before=False)
    big = train(_cfg(model_dirs, "encoder", tmp_path / "big", batch_size=8, **common), log=lambda *a: None)
    acc = train(_cfg(model_dirs, "encoder", tmp_path / "acc", batch_size=4, grad_accum=2, **common), log=lambda *a: None)
    assert big["steps"] == acc["steps"] == 4
    big, acc = (load_file(tmp_path / name / "run-encoder" / "last" / WEIGHTS_NAME) for name in ("big", "acc"))
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-5)


def test_early_stopping_ends_the_run(model_dirs, tmp_path):
    logs = []
    results = train(_cfg(model_dirs, "encoder", tmp_path, learning_rate=1e-12, max_steps=12, eval_every=2, early_stopping=2,
                         eval_before=False), log=logs.append)
    assert results["steps"] == 6  # evals at 2 (best), 4 and 6 (no improvement twice) -> stop
    assert results["best_step"] == 2


def test_report_command_on_run_directories(model_dirs, tmp_path, capsys):
    train(_cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2), log=lambda *a: None)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "compacter++" in table and "demo" in table.lower()


def test_decoder_can_predict_by_generation(model_dirs, tmp_path):
    import transformers as T

    from compacter.modeling import Batcher, load_tokenizer, predict_batch
    from compacter.tasks import get_task, load_split

    task, examples = get_task("demo"), load_split("demo", "test")[:4]
    model = T.AutoModelForCausalLM.from_pretrained(model_dirs["decoder"]).eval()
    batcher = Batcher(load_tokenizer(model_dirs["decoder"], "decoder"), "decoder", task, max_target_length=3)
    generated = predict_batch(model, batcher, examples, decoder_predict="generate")
    scored = predict_batch(model, batcher, examples, decoder_predict="score")
    assert len(generated) == 4 and all(isinstance(g, str) for g in generated)
    assert set(scored) <= {"0", "1"}
    wrong = task.compute_metrics(["not a label"] * 4, examples)
    assert wrong["accuracy"] == 0.0  # a generated answer that is not a label counts as wrong
    results = train(_cfg(model_dirs, "decoder", tmp_path, decoder_predict="generate", max_steps=2, eval_every=2), log=lambda *a: None)
    assert results["config"]["decoder_predict"] == "generate"


def test_decoder_prompts_too_long_lose_the_end_of_their_longest_field(model_dirs):
    import transformers as T
    from tokenizers import processors

    from compacter.modeling import Batcher, load_tokenizer, predict_batch
    from compacter.tasks import Example, get_task
    from compacter.tasks.base import join_fields

    tok = load_tokenizer(model_dirs["decoder"], "decoder")
    bos = tok.convert_tokens_to_ids("[BOS]")  # a start token, as Llama tokenizers add one
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", bos)])
    batcher = Batcher(tok, "decoder", get_task("demo"), max_source_length=24, max_target_length=3)
    fields = {"text": " ".join(str(i % 10) for i in range(60)), "label": "7 7 7 ."}  # a long passage, a short question
    example = Example(join_fields(fields), "1", 1, fields=fields)
    ids = batcher.prompt_ids(example)
    assert len(ids) == 24 and ids[0] == bos
    text = tok.decode(ids[1:])
    assert text.startswith("text : 0 1 2") and text.endswith("label : 7 7 7 . answer :")
    short = Example(join_fields({"label": "7 ."}), "1", 1, fields={"label": "7 ."})
    assert tok.decode(batcher.prompt_ids(short)[1:]) == "label : 7 . answer :"  # short prompts untouched
    bare = Example(example.source, "1", 1)  # no separate fields: the start token and the prompt's end are kept
    bare_ids = batcher.prompt_ids(bare)
    assert len(bare_ids) == 24 and bare_ids[0] == bos and tok.decode(bare_ids[1:]).endswith("label : 7 7 7 . answer :")
    # training, label scoring and generation all see exactly these prompt tokens
    assert batcher.train_batch([example])["input_ids"][0, :24].tolist() == ids
    model = T.AutoModelForCausalLM.from_pretrained(model_dirs["decoder"]).eval()
    seen = []
    real = model.generate
    model.generate = lambda **kw: seen.append(kw) or real(**kw)
    predict_batch(model, batcher, [example, short], decoder_predict="generate")
    assert seen[0]["input_ids"][0].tolist() == ids
    assert [i for i, m in zip(seen[0]["input_ids"][1].tolist(), seen[0]["attention_mask"][1].tolist()) if m] == batcher.prompt_ids(short)


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_two_long_fields_are_cut_evenly(model_dirs, family):
    """Hugging Face's longest_first: the longest field is cut first, two long ones end even; the
    first longest was cut to nothing before (an RTE pair of 40 + 40 tokens at 32 lost its premise)."""
    from compacter.modeling import Batcher, load_tokenizer
    from compacter.tasks import Example, get_task
    from compacter.tasks.base import join_fields

    tok = load_tokenizer(model_dirs[family], family)
    batcher = Batcher(tok, family, get_task("demo"), max_source_length=24)
    fields = {"text": " ".join("1" * 30), "label": " ".join("2" * 30)}
    example = Example(join_fields(fields), "1", 1, fields=fields)
    ids = batcher.prompt_ids(example) if family == "decoder" else batcher.train_batch([example])["input_ids"][0].tolist()
    text = tok.decode(ids, skip_special_tokens=True)
    assert len(ids) <= 24 and "label :" in text
    ones, twos = text.count("1"), text.count("2")
    assert ones > 0 and twos > 0 and abs(ones - twos) <= 1, text


def test_encoder_inputs_too_long_lose_the_end_of_their_longest_field_and_seq2seq_inputs_their_end(model_dirs):
    from compacter.modeling import Batcher, load_tokenizer
    from compacter.tasks import Example, get_task
    from compacter.tasks.base import join_fields

    fields = {"text": " ".join(str(i % 10) for i in range(60)), "label": "7 7 7 ."}  # a long premise, a short hypothesis
    example = Example(join_fields(fields), "1", 1, fields=fields)
    short = Example(join_fields({"label": "7 ."}), "1", 1, fields={"label": "7 ."})
    tok = load_tokenizer(model_dirs["encoder"], "encoder")
    batcher = Batcher(tok, "encoder", get_task("demo"), max_source_length=24)
    batch = batcher.train_batch([example, short])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 24 and batch["attention_mask"][0].all()
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.startswith("text : 0 1 2") and text.endswith("label : 7 7 7 .")  # the hypothesis stays whole
    assert batch["input_ids"][1].tolist() == tok(short.source, padding="max_length", max_length=24)["input_ids"]  # untouched
    bare = batcher.train_batch([Example(example.source, "1", 1)])["input_ids"][0].tolist()  # no fields: the end is cut
    assert len(bare) == 24 and not tok.decode(bare, skip_special_tokens=True).endswith("7 .")
    tok5 = load_tokenizer(model_dirs["seq2seq"], "seq2seq")
    cut = Batcher(tok5, "seq2seq", get_task("demo"), max_source_length=24).train_batch([example])["input_ids"][0].tolist()
    assert cut == tok5(example.source, max_length=24, truncation=True)["input_ids"]  # T5: the end goes, as in the paper's code


@pytest.mark.parametrize("family", ["encoder", "seq2seq"])
def test_peft_lora_peer_runs_through_the_same_pipeline(model_dirs, family, tmp_path):
    pytest.importorskip("peft")
    results = train(_cfg(model_dirs, family, tmp_path, method="peft-lora", adapter={"r": 4}, max_steps=4, eval_every=2), log=lambda *a: None)
    run = tmp_path / f"run-{family}"
    saved = load_file(run / "best" / "peer_model.safetensors")
    assert any("lora_A" in k for k in saved) and results["trainable_params"] == sum(t.numel() for t in saved.values())
    assert results["adapter_bytes"] > 0 and results["steps"] == 4


@pytest.mark.parametrize("arch, head", [("bert", {"classifier"}), ("deberta-v2", {"pooler", "classifier"}),
                                        ("distilbert", {"pre_classifier", "classifier"})])
def test_peers_train_an_encoders_whole_new_head_as_ours_does(arch, head):
    """PEFT's default modules_to_save (classifier, score) would leave DeBERTa's new pooler and
    DistilBERT's pre_classifier frozen at their random init."""
    pytest.importorskip("peft")
    from compacter.peers import add_peer
    from tests.core.tiny import tiny
    model, _ = tiny(arch)
    options = {"target_modules": ["q_lin", "v_lin"]} if arch == "distilbert" else {}  # PEFT has no default for it
    model = add_peer(model, "peft-lora", "encoder", options)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for module in head:
        assert any(f".{module}.modules_to_save." in n for n in trained), (module, sorted(trained))


def test_a_peer_on_an_encoder_without_a_named_body_says_so():
    from compacter.peers import _outside_body
    with pytest.raises(ValueError, match="no pretrained body named by base_model_prefix"):
        _outside_body(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_adapterhub_peer_without_adapters_installed_says_how(model_dirs, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_adapters(name, *args, **kwargs):
        if name == "adapters":
            raise ImportError("No module named 'adapters'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_adapters)
    with pytest.raises(ImportError, match="ah-compacter\\+\\+ needs AdapterHub's `adapters`.*own environment"):
        train(_cfg(model_dirs, "encoder", tmp_path, method="ah-compacter++", adapter={}), log=lambda *a: None)


@pytest.mark.parametrize("method", ["ah-compacter++", "ah-compacter"])
def test_adapterhub_peer_runs_through_the_same_pipeline(model_dirs, method, tmp_path):
    """Runs where AdapterHub's `adapters` is installed (its own venv: it pins transformers 4.x)."""
    adapters = pytest.importorskip("adapters")
    results = train(_cfg(model_dirs, "encoder", tmp_path, method=method, adapter={"reduction_factor": 4}, max_steps=4, eval_every=2),
                    log=lambda *a: None)
    saved = load_file(tmp_path / "run-encoder" / "best" / "peer_model.safetensors")
    assert any("phm_rule" in k for k in saved) and any("classifier" in k for k in saved), sorted(saved)
    assert results["trainable_params"] == sum(t.numel() for t in saved.values()) and results["steps"] == 4
    assert adapters.__version__


def test_adapterhub_peer_trains_a_decoder(model_dirs, tmp_path):
    """A decoder run through AdapterHub (transformers 4.x): the last-columns loss and the cached label scores."""
    pytest.importorskip("adapters")
    results = train(_cfg(model_dirs, "decoder", tmp_path, method="ah-compacter++", adapter={"reduction_factor": 4}, max_steps=4,
                         eval_every=2), log=lambda *a: None)
    saved = load_file(tmp_path / "run-decoder" / "best" / "peer_model.safetensors")
    assert any("phm_rule" in k for k in saved) and results["steps"] == 4
    evals = [json.loads(line) for line in (tmp_path / "run-decoder" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and all(math.isfinite(e["train_loss"]) for e in evals)


def test_grouped_task_subsamples_and_records_questions(model_dirs, tmp_path):
    """MultiRC: train_samples draws questions (their answers stay together); results.json records
    both the answers trained on and the questions, the unit train_samples and the report count."""
    def passage(idx, questions):
        return {"idx": idx, "passage": {"text": f"Passage {idx}.", "questions": [
            {"idx": q, "question": f"Q{q}?", "answers": [{"idx": a, "text": f"a{a}", "label": a % 2} for a in range(3)]}
            for q in range(questions)]}}
    folder = tmp_path / "data" / "MultiRC"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(passage(i, 2)) + "\n" for i in range(3)))
    (folder / "val.jsonl").write_text("".join(json.dumps(passage(10 + i, 1)) + "\n" for i in range(4)))
    cfg = _cfg(model_dirs, "seq2seq", tmp_path, task="multirc", data_dir=str(tmp_path / "data"), train_samples=4,
               max_steps=1, eval_every=None)
    results = train(cfg, log=lambda *a: None)
    assert (results["train_units"], results["train_examples"]) == (4, 12)


def test_evaluate_and_predict_load_the_model_in_the_runs_dtype(model_dirs, tmp_path, monkeypatch, capsys):
    """A run trained with --dtype bfloat16 was evaluated in float32 by `compacter evaluate`."""
    results = train(_cfg(model_dirs, "encoder", tmp_path, dtype="bfloat16", max_steps=2, eval_every=2), log=lambda *a: None)
    seen = []
    real = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda net, *a, **k: seen.append(next(net.parameters()).dtype) or real(net, *a, **k))
    import compacter.modeling as modeling

    real_predict = modeling.predict_batch
    monkeypatch.setattr(modeling, "predict_batch", lambda net, *a, **k: seen.append(next(net.parameters()).dtype) or real_predict(net, *a, **k))
    best = str(tmp_path / "run-encoder" / "best")
    capsys.readouterr()
    assert main(["evaluate", best, "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(results["test"]["score"])
    assert main(["predict", best, "--text", "The soup was great."]) == 0
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    assert main(["evaluate", best, "--split", "test", "--dtype", "float32"]) == 0  # the user's choice wins
    assert set(seen) == {torch.float32}


def test_evaluate_and_predict_use_the_runs_mixed_precision(model_dirs, tmp_path, monkeypatch, capsys):
    """Training evaluates under Accelerate's bf16 autocast; `compacter evaluate` ran in full float32."""
    import compacter.modeling as modeling

    results = train(_cfg(model_dirs, "encoder", tmp_path, mixed_precision="bf16", max_steps=2, eval_every=2), log=lambda *a: None)
    seen = []
    real, real_predict = training.evaluate, modeling.predict_batch
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or real(*a, **k))
    monkeypatch.setattr(modeling, "predict_batch", lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or real_predict(*a, **k))
    best = str(tmp_path / "run-encoder" / "best")
    capsys.readouterr()
    assert main(["evaluate", best, "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(results["test"]["score"])
    assert main(["predict", best, "--text", "The soup was great."]) == 0
    assert seen == [True, True]


@pytest.mark.parametrize("change,shown", [
    (dict(adapter={"reduction_factor": 4, "non_linearity": "relu"}), "--adapter: {'reduction_factor': 4} in the run, "
                                                                       "{'reduction_factor': 4, 'non_linearity': 'relu'} now"),
    (dict(adapter={"reduction_factor": 16}), "--adapter: {'reduction_factor': 4} in the run, {'reduction_factor': 16} now"),
    (dict(learning_rate=0.5), "--learning-rate: 0.01 in the run, 0.5 now"),
    (dict(batch_size=4, seed=7), "--batch-size: 8 in the run, 4 now\n  - --seed: 42 in the run, 7 now"),
])
@pytest.mark.parametrize("finished", [False, True])
def test_resume_refuses_other_settings_before_writing_anything(model_dirs, tmp_path, change, shown, finished):
    """A resumed run silently kept last/'s nonlinearity and learning rate (its scheduler state) while
    config.json said otherwise, or crashed on other adapter shapes after rewriting config.json."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2, eval_before=False)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    if not finished:
        (run / "results.json").unlink()  # as if killed while testing best/
    before = _stamps(run)
    with pytest.raises(ValueError) as err:
        train(dataclasses.replace(cfg, max_steps=4, **change), log=lambda *a: None)
    message = str(err.value)
    assert message.startswith(f"{run} holds a run with other settings") and shown in message, message
    assert "--output-dir" in message and "--no-resume" in message
    assert _stamps(run) == before


def test_resume_may_change_the_length_and_how_the_run_is_shown(model_dirs, tmp_path, capsys):
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2, eval_before=False, learning_rate=None)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    # the method's default rate spelled out, the preset's reduction factor, the folder named another way: no change
    same = dict(learning_rate=3e-3, adapter={"reduction_factor": 4, "non_linearity": "gelu_new"},
                output_dir=str(tmp_path / "." / "run-encoder"), model=model_dirs["encoder"] + "/")
    results = train(dataclasses.replace(cfg, max_steps=4, early_stopping=5, eval_batch_size=3, eval_before=True, **same),
                    log=lambda *a: None)
    assert results["steps"] == 4
    assert json.loads((run / "config.json").read_text())["max_steps"] == 4
    # through the CLI, from the run's config.json: refused with the differences, nothing written
    before = _stamps(run)
    assert main(["train", "--config", str(run / "config.json"), "--max-steps", "6", "--learning-rate", "0.5", "--weight-decay", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate: 0.003 in the run, 0.5 now" in err and "--weight-decay: 0.0 in the run, 0.1 now" in err
    assert _stamps(run) == before
    assert main(["train", "--config", str(run / "config.json"), "--max-steps", "6", "--no-progress"]) == 0


def test_restoring_a_checkpoint_of_other_shapes_is_a_checkpoint_error_and_changes_nothing(model_dirs, tmp_path):
    from compacter import add_adapters
    from compacter.checkpoint import CheckpointError
    from compacter.modeling import load_model
    from compacter.tasks import get_task

    train(_cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2, eval_before=False), log=lambda *a: None)
    model = load_model(model_dirs["encoder"], "encoder", get_task("demo"))
    add_adapters(model, TrainConfig(adapter={"reduction_factor": 8}).adapter_config())
    state = {k: v.clone() for k, v in training.trained_state(model).items()}
    with pytest.raises(CheckpointError, match=r"last/adapter_model.safetensors: made for other shapes(.|\n)*"
                                              r"down.bias: checkpoint has shape \[8\], this model needs \[4\]"):
        training.restore_trained(model, tmp_path / "run-encoder" / "last")
    for key, value in training.trained_state(model).items():
        assert torch.equal(value, state[key]), key


def test_a_resume_that_cannot_restore_last_leaves_config_json_as_it_was(model_dirs, tmp_path):
    from compacter.checkpoint import CheckpointError

    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2, eval_before=False)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    weights = run / "last" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])  # a damaged disk, a partial copy
    config = (run / "config.json").read_text()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(dataclasses.replace(cfg, max_steps=4), log=lambda *a: None)
    assert (run / "config.json").read_text() == config


def _contents(run):
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _edit_state_json(edit):
    def apply(last):
        meta = json.loads((last / "train_state.json").read_text())
        edit(meta)
        (last / "train_state.json").write_text(json.dumps(meta))
    return apply


def _truncate(name):
    return lambda last: (last / name).write_bytes((last / name).read_bytes()[:100])


@pytest.fixture(scope="module")
def two_step_run(model_dirs, tmp_path_factory):
    cfg = _cfg(model_dirs, "encoder", tmp_path_factory.mktemp("base"), max_steps=2, eval_every=1, eval_before=False)
    train(cfg, log=lambda *a: None)
    return cfg


@pytest.mark.parametrize("damage,file,problem,early", [
    (lambda last: (last / "train_state.json").write_text("{"), "train_state.json", r"unreadable \(Expecting", True),
    (lambda last: (last / "train_state.json").write_text("{}"), "train_state.json", "missing or not an object: 'progress'", True),
    (_edit_state_json(lambda m: m["progress"].pop("step")), "train_state.json", "progress.step must be a whole number", True),
    (_truncate("train_state.safetensors"), "train_state.safetensors", "missing, truncated or corrupt", True),
    (lambda last: (last / "train_state.safetensors").unlink(), "train_state.safetensors", "missing, truncated or corrupt", True),
    (_truncate(WEIGHTS_NAME), WEIGHTS_NAME, "missing, truncated or corrupt", True),
    (_edit_state_json(lambda m: m["param_groups"][0].update(params=m["param_groups"][0]["params"][:3])), "train_state.json",
     "its optimizer state does not fit this run's trained tensors", False),
])
@pytest.mark.parametrize("finished", [False, True])
def test_a_damaged_resume_state_is_a_checkpoint_error_naming_its_file(two_step_run, tmp_path, monkeypatch, damage, file, problem,
                                                                       early, finished):
    """Damaged last/ files gave a KeyError or SafetensorError traceback, or a JSON or optimizer message
    that named no file and no way out."""
    from compacter.checkpoint import CheckpointError

    run = tmp_path / "run-encoder"
    shutil.copytree(two_step_run.run_dir(), run)
    if not finished:
        (run / "results.json").unlink()  # as if killed before the test
    damage(run / "last")
    before = _contents(run)
    if early:  # found before the model is loaded
        monkeypatch.setattr(training, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(CheckpointError) as err:
        train(dataclasses.replace(two_step_run, output_dir=str(run), max_steps=4), log=lambda *a: None)
    message = str(err.value)
    assert message.startswith(f"{run / 'last' / file}: ") and re.search(problem, message), message
    assert message.endswith("the run cannot resume from it: give --no-resume to start over in this folder "
                            "(replacing its run files), or another --output-dir")
    assert _contents(run) == before


def test_a_damaged_peer_file_is_a_checkpoint_error_naming_it(tmp_path):
    from safetensors.torch import save_file

    from compacter.checkpoint import CheckpointError
    from compacter.peers import PEER_WEIGHTS, read_peer

    save_file({"w": torch.ones(64, 64)}, tmp_path / PEER_WEIGHTS)
    assert torch.equal(read_peer(tmp_path)["w"], torch.ones(64, 64))
    (tmp_path / PEER_WEIGHTS).write_bytes((tmp_path / PEER_WEIGHTS).read_bytes()[:50])
    with pytest.raises(CheckpointError, match=f"{tmp_path / PEER_WEIGHTS}: truncated or corrupt safetensors file"):
        read_peer(tmp_path)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nowhere' / PEER_WEIGHTS}: no peer weights here"):
        read_peer(tmp_path / "nowhere")


def test_a_run_killed_between_logging_and_checkpointing_logs_each_evaluation_once(model_dirs, tmp_path, monkeypatch):
    """metrics.jsonl is appended before last/ is saved: a kill in between made the resumed run
    evaluate and log that step again (and a kill mid-write left a torn line)."""
    import sys
    import types

    cfg = _cfg(model_dirs, "encoder", tmp_path, eval_every=2, max_steps=6, eval_before=False)
    real_save = training.save_train_state
    calls = []

    def killed_at_second_save(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_save(*args, **kw)

    monkeypatch.setattr(training, "save_train_state", killed_at_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda *a: None)
    monkeypatch.setattr(training, "save_train_state", real_save)
    run = tmp_path / "run-encoder"
    log = run / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4]  # last/ is at step 2
    log.write_text(log.read_text() + '{"step": 4, "epo')  # and a kill in the middle of the next line
    # TensorBoard's events after the resumed step are hidden too (a stand-in records the writer's options)
    writers = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda *a, **kw: writers.append(kw) or types.SimpleNamespace(add_scalar=lambda *a: None,
                                                                                       close=lambda: None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    (run / "tensorboard").mkdir(exist_ok=True)
    train(cfg, log=lambda *a: None)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 6]
    assert writers == [{"purge_step": 3}]


@pytest.mark.parametrize("method", ["compacter++", "peft-lora"])
def test_last_checkpoint_files_get_an_ordinary_files_mode(method, tmp_path):
    """safetensors writes owner-only (0600) files: last/train_state.safetensors (and a peer's
    weights) were 0600 beside the run's 0644 files."""
    import os

    import compacter
    from tests.core.tiny import tiny

    model, batch = tiny("bert")
    if method == "peft-lora":
        pytest.importorskip("peft")
        from compacter.peers import add_peer

        model = add_peer(model, method, "encoder", {})
        model._compacter_peer = method
    else:
        compacter.add_adapters(model, compacter.CompacterConfig(method, reduction_factor=4))
    optimizer = training.adamw(training.trainable_parameters(model), 1e-3)
    scheduler = training._scheduler(optimizer, 0, 2)
    model.train()(**batch).loss.backward()
    optimizer.step()
    scheduler.step()
    mask = os.umask(0o022)
    try:
        training.save_train_state(tmp_path / "last", model, optimizer, scheduler, {"step": 1})
    finally:
        os.umask(mask)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "last").iterdir()}
    assert "train_state.safetensors" in modes and set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("samples,refused", [(20, True), (16, False)])
def test_a_last_state_from_before_partial_batches_resumes_only_where_its_epochs_are_unchanged(model_dirs, tmp_path, samples,
                                                                                             refused):
    """last/ of a version that dropped each epoch's last partial batch counted 2 steps an epoch for
    20 examples at batch 8, where there are 3 now: its counters and schedule do not fit, so it is
    refused, before anything is written; 16 examples are 2 whole batches either way, and resume."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, train_samples=samples, max_steps=2, eval_every=2, eval_before=False)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    (run / "results.json").unlink()  # as if killed while testing best/
    state = run / "last" / "train_state.json"
    meta = json.loads(state.read_text())
    assert meta["progress"].pop("keeps_last_batch") is True
    state.write_text(json.dumps(meta))  # as the older version saved it
    before, logs = _stamps(run), []
    if refused:
        with pytest.raises(ValueError, match=r"train_state.json: saved by an older version.*20 training examples at a global "
                                             r"batch of 8: 2 optimizer step\(s\) an epoch then, 3 now.*--no-resume"):
            train(dataclasses.replace(cfg, max_steps=4), log=logs.append)
        assert _stamps(run) == before
    else:
        assert train(dataclasses.replace(cfg, max_steps=4), log=logs.append)["steps"] == 4
        assert any("resumed" in line and "step 2" in line for line in logs)


def test_a_run_finished_before_partial_batches_is_still_a_finished_run(model_dirs, tmp_path):
    """A finished run of the version that dropped each epoch's last partial batch (20 examples at
    batch 8, 1 epoch: 2 steps then, 3 now) is a finished run, not an old state to refuse with
    advice (--no-resume) that would delete its results."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, train_samples=20, epochs=1, max_steps=None, eval_every=None, eval_before=False)
    train(cfg, log=lambda *a: None)
    state = tmp_path / "run-encoder" / "last" / "train_state.json"
    meta = json.loads(state.read_text())
    meta["progress"].pop("keeps_last_batch")
    meta["progress"]["step"] = 2  # where the older version's epoch ended
    state.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"holds a finished run \(results.json; last/ at step 2 of 2\): nothing to resume"):
        train(cfg, log=lambda *a: None)


@pytest.mark.parametrize("family,method", [("seq2seq", "compacter++"), ("seq2seq", "bitfit"), ("encoder", "pfeiffer"),
                                           ("encoder", "full")])
def test_percent_trainable_is_of_the_base_model_as_loaded(model_dirs, tmp_path, family, method):
    """The paper's (and `compacter params`') percentage divides by the base model's size, not by a
    total that includes the adapters (or BitFit's added biases: T5 has none); the task head is base."""
    import transformers as T

    auto = {"seq2seq": T.AutoModelForSeq2SeqLM, "encoder": T.AutoModelForSequenceClassification}[family]
    base = sum(p.numel() for p in auto.from_pretrained(model_dirs[family], num_labels=2).parameters())
    logs = []
    results = train(_cfg(model_dirs, family, tmp_path, method=method, max_steps=1, eval_every=1, eval_before=False),
                    log=logs.append)
    assert results["base_params"] == base
    assert results["percent_trainable"] == pytest.approx(100 * results["trainable_params"] / base)
    added = results["total_params"] - base  # the adapters, or BitFit's biases: 0 for full fine-tuning
    assert (added == 0) == (method == "full") and (method != "full" or results["percent_trainable"] == 100)
    shown = f"{100 * results['trainable_params'] / base:.4f}% of the base model's {base:,}"
    assert shown in logs[0] and shown in logs[-1]


def test_grad_accum_is_refused_under_deepspeed_and_accepted_elsewhere():
    import types

    from accelerate.utils import DistributedType

    from compacter.training import _check_engine

    with pytest.raises(ValueError, match="--grad-accum 2 is not supported under DeepSpeed"):
        _check_engine(types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), 2)
    _check_engine(types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED), 1)
    _check_engine(types.SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), 4)
    _check_engine(types.SimpleNamespace(distributed_type=DistributedType.NO), 4)


def test_a_resume_clears_the_half_made_folders_of_an_interrupted_checkpoint(model_dirs, tmp_path):
    """Killed inside best/'s swap (best.old/ and best.tmp/, no best/): the resume put best/ back but
    left best.tmp/ behind, in the finished run too."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=2, eval_every=2, eval_before=False)
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    (run / "results.json").unlink()  # killed before the end
    shutil.copytree(run / "best", run / "best.tmp")
    (run / "best").rename(run / "best.old")
    shutil.copytree(run / "last", run / "last.tmp")
    (run / "metrics.jsonl.tmp").write_text("")
    assert train(cfg, log=lambda *a: None)["steps"] == 2
    assert (run / "best" / WEIGHTS_NAME).exists() and (run / "results.json").exists()
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.json", "last", "metrics.jsonl", "results.json"] + (
        ["tensorboard"] if (run / "tensorboard").exists() else [])


@pytest.mark.parametrize("finished", [False, True])
@pytest.mark.parametrize("shorter,asked", [(dict(max_steps=2), "--max-steps 2"), (dict(max_steps=None, epochs=1), "--epochs 1: ")])
def test_a_resume_asked_for_fewer_steps_than_the_run_reached_is_refused(model_dirs, tmp_path, finished, shorter, asked):
    """Resumed with a lower --max-steps, a run trained nothing and wrote results.json with the steps
    it had reached beside the lower max_steps in config.json."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=40, eval_every=40, eval_before=False)  # epochs of 38 steps
    train(cfg, log=lambda *a: None)
    run = tmp_path / "run-encoder"
    if not finished:
        (run / "results.json").unlink()  # killed while testing best/
    before = _stamps(run)
    with pytest.raises(ValueError) as err:
        train(dataclasses.replace(cfg, **shorter), log=lambda *a: None)
    message = str(err.value)
    assert f"{run} holds a run already at step 40" in message and f"({asked}" in message, message
    assert "--max-steps 40 or more" in message and "--output-dir" in message and "--no-resume" in message
    assert _stamps(run) == before


def _crash_after_checkpoints(monkeypatch, n):
    """Make training raise KeyboardInterrupt after its ``n``-th checkpoint; returns the real function."""
    real = training._evaluate_and_checkpoint
    calls = []

    def crash(*args, **kw):
        out = real(*args, **kw)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(training, "_evaluate_and_checkpoint", crash)
    return real


TINY = ["--max-steps", "2", "--eval-every", "2", "--batch-size", "8", "--max-eval-samples", "16", "--adapter", "reduction_factor=4",
        "--no-progress", "--no-eval-before"]


@pytest.mark.parametrize("restart", [False, True])
def test_ctrl_c_in_the_cli_says_where_the_run_resumes_from_without_a_traceback(model_dirs, tmp_path, monkeypatch, capsys, restart):
    run = tmp_path / "run"
    argv = ["train", "--model", model_dirs["encoder"], "--output-dir", str(run), *TINY, "--max-steps", "4"]
    argv += ["--no-resume"] if restart else []
    real = _crash_after_checkpoints(monkeypatch, 1)
    try:
        rc = main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI (a traceback)")
    assert rc == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: the last checkpoint is {run / 'last'} (step 2); "
        + ("rerun the command without --no-resume to resume it (with --no-resume it starts over)" if restart
           else "rerun the same command to resume it"))
    monkeypatch.setattr(training, "_evaluate_and_checkpoint", real)
    if not restart:
        assert main(argv) == 0
        assert "resumed from" in capsys.readouterr().out


def test_a_run_started_with_no_resume_resumes_from_its_config_json(model_dirs, tmp_path, monkeypatch, capsys):
    """config.json kept "resume": false, and `train --config <run>/config.json` read it back: the
    interrupted run was wiped and started over, and a finished one trained again over its results."""
    cfg = _cfg(model_dirs, "encoder", tmp_path, max_steps=4, eval_every=2, eval_before=False, resume=False)
    real = _crash_after_checkpoints(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda *a: None)
    monkeypatch.setattr(training, "_evaluate_and_checkpoint", real)
    run = tmp_path / "run-encoder"
    config = str(run / "config.json")
    capsys.readouterr()
    assert main(["train", "--config", config, "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert not {"resume", "progress"} & json.loads((run / "config.json").read_text()).keys()
    before = _stamps(run)
    assert main(["train", "--config", config]) == 2  # finished: refused, its results kept
    assert "holds a finished run" in capsys.readouterr().err
    assert _stamps(run) == before


def _copy_demo_files(folder):
    from importlib import resources

    folder.mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        (folder / name).write_bytes((resources.files("compacter.tasks") / "demo" / name).read_bytes())


@pytest.mark.parametrize("data", ["data_dir", "own_files"])
def test_a_runs_local_paths_are_recorded_absolute_and_found_from_anywhere(model_dirs, tmp_path, monkeypatch, capsys, data):
    """config.json kept paths as typed (--data-dir ../shared/data): `compacter evaluate run/best` worked
    only from the folder the run was started in (elsewhere another copy at that path was read)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(model_dirs["encoder"], work / "model")
    elsewhere.mkdir()
    if data == "data_dir":
        _copy_demo_files(work / "data")
        paths = {"model": "./model", "data_dir": "data"}
        argv = ["--data-dir", "data"]
    else:
        (work / "data").mkdir()
        _soup_csv(work / "data" / "train.csv", 40)
        _soup_csv(work / "data" / "dev.csv", 20, start=100)
        paths = {"model": "./model", "train_file": "data/train.csv", "validation_file": "data/dev.csv"}
        argv = ["--task", "soup", "--train-file", "data/train.csv", "--validation-file", "data/dev.csv", "--text-columns", "text",
                "--label-names", "neg", "pos"]
    monkeypatch.chdir(work)
    assert main(["train", "--model", "./model", "--output-dir", "run", *argv, *TINY]) == 0
    run = work / "run"
    saved = json.loads((run / "config.json").read_text())
    assert {k: saved[k] for k in paths} == {k: str(work / v.removeprefix("./")) for k, v in paths.items()}
    results = json.loads((run / "results.json").read_text())
    # results.json's own "model" stays as typed: compacter report groups runs by it, and runs recorded
    # before paths were stored absolute must still make one row with new ones
    assert results["model"] == "./model" and results["config"] == saved
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", str(run / "best")]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(results["test"]["score"])
    # a config.json of older versions, with the paths as typed: read from the current folder as
    # before; from elsewhere, an error that says they are relative and where they were recorded
    (run / "config.json").write_text(json.dumps({**saved, **paths}))
    assert main(["evaluate", str(run / "best")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'} records model './model', a path relative to the folder that run was started in" in err, err
    assert main(["evaluate", str(run / "best"), "--model", str(work / "model")]) == 2
    err = capsys.readouterr().err
    shown = "data_dir 'data'" if data == "data_dir" else "train_file 'data/train.csv'"
    assert f"records {shown}, a path relative" in err and str(elsewhere / "data") in err, err
    monkeypatch.chdir(work)
    assert main(["evaluate", str(run / "best")]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(results["test"]["score"])
