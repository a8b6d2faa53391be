"""benchmarks/glue_sweep.py: one process per run, resumable, a table at the end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "glue_sweep.py"


def test_sweep_runs_each_run_in_its_own_process_and_resumes(model_dirs, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(SWEEP), "--model", model_dirs["encoder"], "--tasks", "demo", "--methods", "compacter++", "bitfit",
           "--epochs", "1", "--max-steps", "2", "--batch-size", "4", "--max-eval-samples", "8", "--adapter", "reduction_factor=4",
           "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [json.loads(x) for x in first.stdout.splitlines() if x.startswith("{")]
    assert [(x["task"], x["method"]) for x in lines] == [("demo", "compacter++"), ("demo", "bitfit")]
    for method in ("compacter++", "bitfit"):
        results = json.loads((out / f"demo-{method}-seed42" / "results.json").read_text())
        assert results["steps"] == 2 and results["peak_rss_bytes"] > 0 and results["train_examples"] == results["train_units"] == 300  # the demo task whole
        assert results["config"]["adapter"] == {"reduction_factor": 4}
        assert (out / f"demo-{method}-seed42.log").exists()
    table = (out / "table.md").read_text()
    assert "compacter++" in table and "bitfit" in table
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # finished runs are skipped
    assert again.returncode == 0 and not [x for x in again.stdout.splitlines() if x.startswith("{")]
    changed = subprocess.run([*cmd[:cmd.index("--epochs")], "--epochs", "2", *cmd[cmd.index("--epochs") + 2:]],
                             capture_output=True, text=True, timeout=600)  # same folder, other settings: refused
    assert changed.returncode != 0 and "other settings (epochs: 1 there)" in changed.stderr


def test_several_budgets_run_a_small_set_whole_once(model_dirs, tmp_path):
    """A low-resource sweep: one folder per budget; the demo task's 300 examples fit the 400 budget
    and are run once, whole (a sweep per budget ran them again, and the report refused the twin)."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(SWEEP), "--model", model_dirs["encoder"], "--tasks", "demo", "--methods", "bitfit",
           "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--max-eval-samples", "8", "--train-samples", "100", "400",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([x for x in done.stdout.splitlines() if x.startswith("{")]) == 2
    assert json.loads((out / "n100" / "demo-bitfit-seed42" / "results.json").read_text())["train_examples"] == 100
    assert json.loads((out / "whole" / "demo-bitfit-seed42" / "results.json").read_text())["config"]["train_samples"] is None
    assert not (out / "n400").exists()
    low = (out / "table.md").read_text().split("## Low-resource")[1]
    assert "| method | 100 | 300 |" in low  # the whole set at the size it has


def _sweep_module():
    spec = importlib.util.spec_from_file_location("bench_glue_sweep", SWEEP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _configs(argv, tasks=("cola", "mnli")):
    """{task: the TrainConfig the sweep would write for it} (compacter++, seed 42), nothing trained."""
    sweep = _sweep_module()
    args = sweep.parse_args(argv)
    return args, {t: sweep.run_config(args, Path("out"), t, "compacter++", 42, None, {}) for t in tasks}


def test_paper_flag_gives_the_papers_recipe_in_each_runs_config():
    """--paper: batch 100, 500 warm-up steps, 20 epochs on small sets and 3 on large ones, the
    paper's fourteen tasks, all written into config.json (before it, the sweep ran batch 32,
    20 epochs everywhere, a 10%-capped warm-up and eight CPU tasks)."""
    args, cfgs = _configs(["--paper"], tasks=("cola", "stsb", "wic", "wsc", "SST-2", "mnli", "qqp", "qnli", "multirc", "record"))
    assert args.tasks == ["mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte",
                          "multirc", "copa", "record", "cb", "boolq", "wic"]
    assert {t: c.epochs for t, c in cfgs.items()} == {"cola": 20, "stsb": 20, "wic": 20, "wsc": 20, "SST-2": 3, "mnli": 3,
                                                       "qqp": 3, "qnli": 3, "multirc": 3, "record": 3}
    for cfg in cfgs.values():
        saved = cfg.to_dict()
        assert (saved["batch_size"], saved["warmup_steps"], saved["learning_rate"]) == (100, 500, 3e-3)


def test_explicit_flags_win_over_paper_and_plain_defaults_are_unchanged():
    args, cfgs = _configs(["--paper", "--tasks", "cola", "mnli", "--epochs", "2", "--batch-size", "8", "--warmup-steps", "0"])
    assert args.tasks == ["cola", "mnli"]
    assert {(c.epochs, c.batch_size, c.warmup_steps) for c in cfgs.values()} == {(2, 8, 0)}
    args, cfgs = _configs(["--paper", "--batch-size", "50"])  # one override; the rest stays the paper's
    assert [(c.epochs, c.batch_size, c.warmup_steps) for c in cfgs.values()] == [(20, 50, 500), (3, 50, 500)]
    args, cfgs = _configs([])  # without --paper: the CPU sweep's settings, as before (finished sweeps still resume)
    assert args.tasks == ["cola", "sst2", "mrpc", "stsb", "rte", "cb", "copa", "wsc"]
    assert {(c.epochs, c.batch_size, c.warmup_steps) for c in cfgs.values()} == {(20, 32, None)}


def test_paper_flag_refuses_an_unknown_task_before_any_run(capsys):
    with pytest.raises(SystemExit):
        _sweep_module().parse_args(["--paper", "--tasks", "cola", "mnlii"])
    assert "unknown task 'mnlii'" in capsys.readouterr().err


def test_a_method_the_model_cannot_hold_is_refused_before_any_run(model_dirs, tmp_path):
    """The tiny encoder has 2 layers: adapterdrop (5 dropped) cannot be placed, and the sweep says
    so before training anything, not after the methods before it ran."""
    sweep = _sweep_module()
    args = sweep.parse_args(["--model", model_dirs["encoder"], "--tasks", "demo", "--methods", "compacter++", "adapterdrop",
                             "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--methods: drop_first_layers=5 leaves no attention site"):
        sweep.check_methods(args, {"reduction_factor": 4})
    sweep.check_methods(sweep.parse_args(["--model", model_dirs["encoder"], "--methods", "compacter++", "adapter"]),
                        {"reduction_factor": 4})


def test_a_negative_warmup_is_refused(capsys):
    with pytest.raises(SystemExit):
        _sweep_module().parse_args(["--warmup-steps", "-1"])
    assert "argument --warmup-steps: must be 0 or more, got -1" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited ru_maxrss is a Linux behaviour")
def test_a_run_started_by_a_large_parent_reports_its_own_peak_memory(tmp_path):
    # glue_sweep starts each run with subprocess; ru_maxrss carries the parent's high-water mark
    # across exec, so a parent that once held 1 GiB made every run report at least 1 GiB.
    parent = (
        "import subprocess, sys\n"
        "big = b'x' * (1 << 30)  # touched: resident\n"
        "del big\n"
        "child = 'import resource; from compacter.training import _peak_rss; print(_peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)'\n"
        "sys.exit(subprocess.call([sys.executable, '-c', child]))\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout.split()
    ours, inherited = int(out[0]), int(out[1])
    assert inherited >= 1 << 30  # the premise: ru_maxrss holds the parent's peak
    assert 0 < ours < 1 << 30, f"the child reported {ours / 2**30:.2f} GiB, its parent's peak"
