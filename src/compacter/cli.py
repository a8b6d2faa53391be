"""The ``compacter`` command: train, evaluate, predict, params, report.

Each subcommand is a typed function; the flags of ``train`` are the fields of
:class:`~compacter.training.TrainConfig` (``--batch-size`` is ``batch_size``), with their help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from .config import METHODS
from .peers import PEER_METHODS


class UsageError(ValueError):
    """A command line that asks for something impossible or leaves out what is needed: ``main``
    reports it as argparse does its own (the subcommand's usage, exit status 2)."""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


_PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}  # train_layer_norms=False reads as a bool, not text


def parse_key_values(items: list[str] | None) -> dict[str, Any]:
    """``["reduction_factor=16", "phm-dim=4"]`` -> ``{"reduction_factor": 16, "phm_dim": 4}``: the
    ``--adapter KEY=VALUE`` parsing (values read as JSON where they parse, Python's True / False /
    None as well, else kept as text; dashes in keys become underscores), shared with
    `benchmarks/glue_sweep.py`."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --adapter expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = _PYTHON_CONSTANTS[value] if value in _PYTHON_CONSTANTS else _parse_value(value)
    return out


def key_value(text: str) -> str:
    """argparse type of ``--adapter``: one KEY=VALUE item (parsed later by :func:`parse_key_values`)."""
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


#: help of ``--adapter``: several items after one flag, or the flag repeated
ADAPTER_HELP = "one or more KEY=VALUE items after one flag, or the flag repeated (a key given twice: the last wins); "


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .training import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    parser.add_argument("--config", help="a run's config.json: train with its settings (flags given here override "
                        "them); with its own output folder an unfinished run resumes, so give a new --output-dir to repeat it. "
                        "--resume and --progress come from the flags only (a config.json of older versions that holds "
                        "them is read without them); relative paths in such a file are read from the current folder")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")
        hint = hints[f.name]
        if f.name == "adapter":
            parser.add_argument(flag, action="extend", nargs="+", type=key_value, metavar="KEY=VALUE", default=None,
                                help=ADAPTER_HELP + help_text.replace(" (repeatable)", "").replace(
                                    "e.g. phm_dim=8 reduction_factor=16", "e.g. --adapter phm_dim=8 reduction_factor=16"))
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"{help_text} (default: {f.default})")
        elif typing.get_origin(hint) in (list, typing.Union, getattr(__import__("types"), "UnionType", None)) and "list" in str(hint):
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            if type(None) in typing.get_args(hint) and f.default is not None:  # e.g. --max-grad-norm none
                base = _or_none(base)
            shown = "" if f.default is None else f" (default: {f.default})"  # None: not set, the help says what then
            parser.add_argument(flag, type=base, default=None, help=help_text + shown,
                                choices=METHODS + PEER_METHODS if f.name == "method" else None)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a batch size of 0 or -1 predicts nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


#: "none" given for an optional option whose default is not None (argparse's None means "not given")
NONE = type("NoneGiven", (), {"__repr__": lambda self: "none"})()


def _or_none(base: type):
    def parse(text: str):
        return NONE if text.lower() == "none" else base(text)
    parse.__name__ = base.__name__  # argparse names the type in its error messages
    return parse


#: The offline demo (no --task, no --config): settings that train the bundled task in a few CPU minutes.
DEMO_DEFAULTS = {"epochs": 10, "batch_size": 16}
#: ... and for the default method (no --method): the paper's 3e-3 learns too slowly in the demo's
#: 190 steps, 1e-2 reaches ~80-90% accuracy. A method named on the command line keeps its paper rate.
DEMO_LEARNING_RATE = 1e-2


def cmd_train(args: argparse.Namespace) -> int:
    from .training import INVOCATION_OPTIONS, PATH_OPTIONS, TrainConfig, end_distributed, recorded_path, train

    data: dict[str, Any] = {}
    if args.config:
        # resume and progress are this command's flags, not the run's settings (older config.json files
        # kept "resume": false, which started over the run --config was to resume)
        data = {k: v for k, v in read_config_file(args.config).items() if k not in INVOCATION_OPTIONS}
        for name in PATH_OPTIONS:  # older config.json files: relative paths, read from here if they are here
            if name in data and getattr(args, name) is None:
                data[name] = recorded_path(data.get(name), name, args.config, "--" + name.replace("_", "-"))
    elif args.task in (None, "demo") and args.train_file is None:
        data = dict(DEMO_DEFAULTS)
        if args.method is None:
            data["learning_rate"] = DEMO_LEARNING_RATE
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is None:
            continue
        if value is NONE:
            value = None
        elif f.name == "adapter":
            value = {**(data.get("adapter") or {}), **parse_key_values(value)}
        data[f.name] = value
    try:
        try:
            cfg = TrainConfig.from_dict(data)
        except ValueError as err:
            if args.config:  # the values may come from the file or from a flag
                raise ValueError(f"--config {args.config} with the flags given: {err}") from None
            raise
        args.run, args.restart = cfg.run_dir(), not cfg.resume  # for the message of a Ctrl-C (main)
        train(cfg)
    finally:
        args.gloo = end_distributed()  # main leaves gloo processes with os._exit, errors too
    return 0


def _interrupted(args: argparse.Namespace) -> str:
    """The line a Ctrl-C during ``train`` prints: where the run can resume from, and how."""
    from .training import last_checkpoint

    run = getattr(args, "run", None)
    if run is None:
        return "interrupted (before the run was set up)"
    found = last_checkpoint(run)
    if found is None:
        return f"interrupted: no checkpoint was written yet in {run}; rerunning the same command starts the run again"
    folder, step = found
    again = ("rerun the command without --no-resume to resume it (with --no-resume it starts over)" if args.restart
             else "rerun the same command to resume it")
    return f"interrupted: the last checkpoint is {folder}{f' (step {step})' if step is not None else ''}; {again}"


def read_config_file(path: str) -> dict[str, Any]:
    """The options in a run's config.json (``train --config``), their names and types checked; a
    problem is a ValueError naming the file (and the line and column of a JSON syntax error)."""
    from .training import TrainConfig, json_kind

    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"--config {path}: not a text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object of training options "
                         f"(like a run's config.json), got {json_kind(data)}")
    problems = TrainConfig.option_problems(data)
    if problems:
        raise ValueError(f"--config {path}: invalid training options:\n  - " + "\n  - ".join(problems))
    return data


def _load_adapted(adapter_dir: str, model: str | None, task_name: str | None, dtype: str | None = None):
    """Base model + saved adapter (or a peer run's saved peer, :func:`_load_peer`), ready to predict;
    the model, task and weights dtype default to the run's (a run trained in bfloat16 is evaluated
    in bfloat16, as its results.json was). Returns (model, batcher, task, run config dict, own)
    where ``own`` is the run's TrainConfig when it trained on the user's own files and no other
    --task is asked for (else None)."""
    from . import load_adapters, read_adapter_config
    from .modeling import Batcher, check_model_path, load_model, load_tokenizer, model_family
    from .tasks import get_task
    from .training import DTYPES, default_model_path, recorded_path

    peer = _peer_method(adapter_dir)
    run_config = _run_config(adapter_dir)
    if peer:  # peer_config.json names the method only: its options, model and task are the run's
        if not run_config:
            raise ValueError(f"{adapter_dir}: a {peer} peer checkpoint records only its method; its options (--adapter), "
                             f"model and task are in its run's config.json, expected at {_run_config_path(adapter_dir)}: "
                             "give the checkpoint inside its run directory (<run>/best)")
        if run_config.get("method") != peer:
            raise ValueError(f"{adapter_dir}: peer_config.json says {peer}, but {_run_config_path(adapter_dir)} "
                             f"says method {run_config.get('method')!r}: files of two runs?")
        meta = {}
    else:
        _, meta = read_adapter_config(adapter_dir)
    model_path = model or recorded_path(run_config.get("model"), "model", _run_config_path(adapter_dir), "--model") \
        or meta.get("base_model") or (peer and default_model_path())
    if not model_path:  # (a peer run's null model is the bundled encoder it trained on)
        raise UsageError("the adapter does not name its base model: pass --model")
    option = ("--model" if model else f"the model {_run_config_path(adapter_dir)} names" if run_config.get("model") else
              "the bundled encoder (the run's default model)" if peer else f"the base model {adapter_dir} names")
    check_model_path(model_path, option)
    # a run directory's config.json without "dtype" predates the option: those runs trained in float32;
    # an adapter outside a run directory loads the model in the dtype its files were saved in
    dtype = dtype or (run_config.get("dtype", "float32") if run_config else None)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"{_run_config_path(adapter_dir)}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    own = None
    if task_name is None and run_config.get("train_file"):  # a run on the user's own files: their task again
        from .training import TrainConfig, resolve_task

        own = TrainConfig.from_dict({**run_config, **{k: recorded_path(run_config.get(k), k, _run_config_path(adapter_dir))
                                                      for k in ("train_file", "validation_file", "test_file")}})
        task = resolve_task(own)
    else:
        task = get_task(task_name or run_config.get("task") or _missing("--task"))
    family = model_family(model_path, option)
    if peer:  # the encoder's new head is part of the peer's trained tensors, as in training
        net = _load_peer(load_model(model_path, family, task, DTYPES[dtype] if dtype else None), peer, family,
                         run_config, adapter_dir)
    else:
        net = load_model(model_path, family, task, DTYPES[dtype] if dtype else None, adapter=adapter_dir)
        load_adapters(net, adapter_dir)
    batcher = Batcher(load_tokenizer(model_path, family), family, task,
                      run_config.get("max_source_length", 128), run_config.get("max_target_length", 16))
    return net.eval(), batcher, task, run_config, own


def _peer_method(folder: str) -> str | None:
    """The peer method of a peer run's checkpoint folder (its peer_config.json), None for ours."""
    from .checkpoint import CONFIG_NAME
    from .peers import peer_method

    return None if (Path(folder) / CONFIG_NAME).is_file() else peer_method(Path(folder))


def _load_peer(net, method: str, family: str, run_config: dict, folder: str):
    """``net`` wrapped with the peer as the run wrapped it (``add_peer`` with the run's --adapter
    options), its trained tensors loaded from peer_model.safetensors (safetensors, never a pickle)
    as training reloads best/ for its test: every name and shape must match, NaN or infinite values
    are refused (:class:`~compacter.checkpoint.CheckpointError`, naming the file)."""
    from .peers import add_peer
    from .training import restore_trained

    try:
        net = add_peer(net, method, family, run_config.get("adapter") or {})
    except ImportError as err:
        raise ImportError(f"{folder} holds a {method} run: {err}") from None
    net._compacter_peer = method  # what restore_trained reads the peer's tensors by
    restore_trained(net, Path(folder))
    return net


def _run_autocast(net, run_config: dict):
    """The autocast the run's own evaluations ran under: Accelerate wraps the model's forward in
    it for --mixed-precision bf16 (on any device) and fp16 (on a GPU; on a CPU it does not)."""
    import contextlib

    import torch

    device = next(net.parameters()).device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16 if device == "cuda" else None}.get(run_config.get("mixed_precision"))
    return torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()


def _run_config_path(adapter_dir: str) -> Path:
    return Path(adapter_dir).parent / "config.json"


def _run_config(adapter_dir: str) -> dict:
    """The config.json of the run directory that holds the adapter folder ({} when there is none)."""
    path = _run_config_path(adapter_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: the run's config is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the run's config is not a JSON object")
    return data


def _missing(flag: str):
    raise UsageError(f"{flag} is required (the adapter folder is not inside a run directory)")


def _own_split(own, task, split: str) -> list:
    """The run's own files' ``split``, the examples training scored (:func:`~compacter.training.load_splits`).
    The training file is read only where the held-out sets came out of it (no --validation-file):
    with a validation file they are that file halved, or it and the test file."""
    from .training import load_held_out, load_splits

    if own.validation_file is None:
        if not Path(own.train_file).is_file():
            raise ValueError(f"--train-file {own.train_file}: not found; the run held its validation and test examples "
                             "out of its training file (it had no --validation-file), so scoring them needs that file")
        return load_splits(own, task)[split]
    examples = load_held_out(own, task)[split]
    if not examples:
        where = own.test_file if split == "test" and own.test_file else own.validation_file
        raise ValueError(f"empty {split} split from {where}")
    return examples


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate, recorded_path
    from .tasks.splits import paper_split

    net, batcher, task, run_config, own = _load_adapted(args.adapter, args.model, args.task, args.dtype)
    if own is not None:  # the run's own files, split as in training
        examples = _own_split(own, task, args.split)
    else:  # only the official split(s) this split comes from: the test split never needs the training file
        data_dir = args.data_dir or recorded_path(run_config.get("data_dir"), "data_dir", _run_config_path(args.adapter),
                                                  "--data-dir")
        examples = paper_split(task, args.split, data_dir, seed=run_config.get("split_seed", 42))
    with _run_autocast(net, run_config):
        metrics = evaluate(net, batcher, examples, batch_size=args.batch_size,
                           decoder_predict=run_config.get("decoder_predict", "score"))
    print(json.dumps({"task": task.name, "split": args.split, **metrics}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """One JSON line per example: rows go through the task's formatter, as in training
    (`format_unlabeled`), so WSC gets its span marks, MultiRC loses its markup, ReCoRD gets its
    entity list. Every input is formatted before anything is predicted; a bad one is a
    ValueError naming it (its index and, from --file, its file:line) and what the task needs.
    Tasks whose rows give one example print {"input", "prediction", "label"}; MultiRC and
    ReCoRD print {"row" (the input's index), "group", "fields", "prediction", "label"}."""
    from .modeling import predict_batch
    from .tasks.base import DataError
    from .tasks.data import file_rows
    from .tasks.formats import format_unlabeled, several_per_row

    if not args.text and not args.file:  # before the model is loaded
        raise UsageError("give --text (repeatable) or --file")
    net, batcher, task, run_config, _ = _load_adapted(args.adapter, args.model, args.task, args.dtype)
    inputs: list[tuple[str, Any]] = []  # (where, row)
    for number, text in enumerate(args.text or [], 1):
        parsed = _parse_value(text)
        inputs.append((f"--text {number}", parsed if isinstance(parsed, dict) else {task.input_fields[0]: text}))
    if args.file:
        rows = list(file_rows(task, args.file, labels=False))
        if not rows:  # it was "give --text (repeatable) or --file", with --file given
            raise DataError(f"--file {args.file}: no input rows in it (an empty file?)")
        inputs += rows
    examples, rows = [], []  # rows[i]: the input index of examples[i]
    for index, (where, row) in enumerate(inputs):
        try:
            formatted = format_unlabeled(task, row)
        except DataError as err:
            raise DataError(f"input {index} ({where}): {err}") from None
        examples += formatted
        rows += [index] * len(formatted)
    predictions = []
    with _run_autocast(net, run_config):
        for start in range(0, len(examples), args.batch_size):
            predictions += predict_batch(net, batcher, examples[start:start + args.batch_size],
                                         run_config.get("decoder_predict", "score"))
    several = several_per_row(task)
    for index, example, pred in zip(rows, examples, predictions):
        name = task.label_names[int(pred)] if task.label_texts and pred in task.label_texts else pred
        where = {"row": index, "group": example.group, "fields": example.fields} if several else {"input": inputs[index][1]}
        print(json.dumps({**where, "prediction": pred, "label": name}))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from .config import CompacterConfig
    from .modeling import check_model_path
    from .params import KNOWN_SHAPES, params_table

    overrides = args.adapter and parse_key_values(args.adapter)
    for method in args.methods or METHODS:  # before the model's config is read
        try:
            CompacterConfig(method, **(overrides or {}))
        except (ValueError, TypeError) as err:
            raise ValueError(f"--adapter {' '.join(args.adapter)} (with method {method}): {err}") from None
    if args.model not in KNOWN_SHAPES:  # a mistyped local path reached transformers as a Hub repo id
        check_model_path(args.model)
    print(params_table(args.model, args.methods or list(METHODS), overrides, skip_unfit=args.methods is None))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_main

    problems: list[str] = []
    print(report_main(args.runs, args.out, args.plot, low_resource_plot_path=args.low_resource_plot, warn=problems.append))
    for problem in problems:  # after the table: the last thing on the terminal
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0  # a figure asked for is missing; what could be written was


def build_parser() -> argparse.ArgumentParser:
    from .training import DTYPES

    parser = argparse.ArgumentParser(prog="compacter", description="Parameter-efficient fine-tuning with Compacter adapters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser("train", help="fine-tune adapters on a task (no flags: the offline demo)",
                           description="Fine-tune a pretrained model's adapters on a task. With no flags: Compacter++ on the "
                           "bundled MiniLM encoder and the bundled demo task, offline, in about 30 s on 2 CPU cores.")
    _add_train_flags(train)
    train.set_defaults(func=cmd_train, subparser=train)
    for name, func, help_text in (("evaluate", cmd_evaluate, "score a saved adapter on a task split"),
                                  ("predict", cmd_predict, "labels for texts or a file with a saved adapter")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("adapter", help="adapter folder: a run's best/ (e.g. runs/demo-compacter++-seed42/best; "
                       f"a peer run's too: {', '.join(PEER_METHODS)}), or a folder save_adapters wrote")
        p.add_argument("--model", help="base model (default: the one the run used)")
        p.add_argument("--task", help="task (default: the one the run used)")
        p.add_argument("--batch-size", type=positive_int, default=64, help="examples per batch (default: 64)")
        p.add_argument("--dtype", choices=tuple(DTYPES),
                       help="dtype of the loaded weights (default: the run's --dtype, as in its results.json)")
        p.set_defaults(func=func, subparser=p)
        if name == "evaluate":
            p.add_argument("--split", choices=("validation", "test"), default="test", help="which split (default: test)")
            p.add_argument("--data-dir", help="benchmark files folder (default: the run's, else the HF hub)")
        else:
            p.add_argument("--text", action="append", help="an input: plain text for the first field, or a JSON object of fields "
                           "(a row as in the task's data files; labels are not needed)")
            p.add_argument("--file", help="a .jsonl/.csv/.tsv file of input rows, formatted as in training")
    params = sub.add_parser("params", help="trainable / total parameters of methods on a model (config only, no weights)",
                            description="Count trainable and total parameters of each method on a model built from its config "
                            "(no weights are loaded).")
    params.add_argument("--model", required=True, help="a model folder or hub name (its config.json is enough), or t5-base-shapes")
    params.add_argument("--methods", nargs="+", default=None, choices=METHODS, metavar="METHOD",
                        help=f"methods to count (default: all of {', '.join(METHODS)}, less those this model cannot "
                             f"hold, e.g. adapterdrop on 5 layers or fewer, each named in a note)")
    params.add_argument("--adapter", action="extend", nargs="+", type=key_value, metavar="KEY=VALUE",
                        help=ADAPTER_HELP + "CompacterConfig overrides for every method, e.g. --adapter phm_dim=8 reduction_factor=16")
    params.set_defaults(func=cmd_params, subparser=params)
    report = sub.add_parser("report", help="run directories -> markdown tables and the paper's Figure 1/Figure 4 plots",
                            description="Summarise run directories (their results.json) as markdown tables (with a low-resource "
                            "table when the runs used several training-set sizes), and plot score against % trained "
                            "parameters (the paper's Figure 1) and against training-set size (Figure 4). A figure the runs cannot "
                            "fill (Figure 4 without --train-samples runs, Figure 1 without a row that has every task) is not "
                            "written: a warning on stderr says why, the table and the other figure are still written, and the "
                            "exit status is 1.")
    report.add_argument("runs", nargs="+", help="run directories, or folders holding several")
    report.add_argument("--out", help="write the markdown here")
    report.add_argument("--plot", help="write Figure 1 here (PNG): average score against %% trained parameters")
    report.add_argument("--low-resource-plot", help="write Figure 4 here (PNG): score against training-set size, a line per method")
    report.set_defaults(func=cmd_report, subparser=report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UsageError as err:  # as argparse reports its own: the subcommand's usage, exit status 2
        args.subparser.error(str(err))
    except (ValueError, ImportError, OSError) as err:  # OSError: a file or folder that cannot be read or written
        print(f"error: {err}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback, for train (the others are quick)
        if args.command != "train":
            raise
        if os.environ.get("RANK", "0") == "0":  # one line, not one per process
            print(_interrupted(args), file=sys.stderr)
        rc = 130
    except RuntimeError as err:
        from .training import TrainingDiverged  # imported here: torch only when a run has failed

        if not isinstance(err, TrainingDiverged):
            raise
        print(f"error: {err}", file=sys.stderr)  # the message says what was kept and what to try
        rc = 1
    if getattr(args, "gloo", False):  # see end_distributed: the interpreter shutdown can abort gloo processes
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
