"""Tasks as text-to-text problems: formats, metrics, data loading and the paper's splits.

Usage::

    from compacter.tasks import get_task, paper_splits
    task = get_task("rte")
    splits = paper_splits(task, data_dir="../shared/data")   # no data_dir: the HF hub
    splits["train"][0].source   # 'sentence1: No Weapons of Mass ... sentence2: Weapons of ...'
    splits["train"][0].target   # '1'
    task.compute_metrics(predicted_strings, splits["test"])   # {'accuracy': .., 'score': ..}

Decisions (see the modules for details):
- Metrics and `score` (the mean of a task's metrics) are on a 0-100 scale, as in the paper.
- A generated string that is not a valid target counts as wrong (`metrics` says how for
  each metric); an unparsable STS-B prediction scores as -1.0. STS-B correlations use the
  unrounded gold score (`Example.label`), not the rounded target.
- STS-B targets: the score rounded to the nearest 0.2, ties upward, on exact decimals
  ("2.5" -> "2.6", "3.9" -> "4.0"), written with one decimal.
- Field prefixes always end in ":" (the released code forgot it for MNLI's hypothesis).
  COPA's source omits the cause/effect `question`, as in the released code.
- This package is torch-free: numpy, scipy, scikit-learn and the standard library only;
  `datasets` is imported only to read from the hub.
"""

from .base import UNPARSABLE_REGRESSION_VALUE, DataError, Example, Task, round_to_step
from .data import load_file, load_files, load_split, rows_to_examples
from .metrics import METRICS, compute_metrics
from .registry import GLUE_TASKS, SUPERGLUE_TASKS, TASK_NAMES, TASKS, custom_task, get_task
from .splits import PROTOCOLS, apply_protocol, paper_splits

__all__ = [
    "DataError", "Example", "GLUE_TASKS", "METRICS", "PROTOCOLS", "SUPERGLUE_TASKS", "TASKS", "TASK_NAMES",
    "Task", "UNPARSABLE_REGRESSION_VALUE", "apply_protocol", "compute_metrics", "custom_task", "get_task",
    "load_file", "load_files", "load_split", "paper_splits", "round_to_step", "rows_to_examples",
]
