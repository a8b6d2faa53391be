"""benchmarks/glue_sweep.py: one process per run, resumable, a table at the end."""

import json
import subprocess
import sys
from pathlib import Path

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
