"""compacter: parameter-efficient fine-tuning of pretrained transformers with Compacter adapters.

>>> import compacter
>>> config = compacter.CompacterConfig("compacter++")          # or "compacter", "adapter", ...
>>> model = compacter.add_adapters(model, config)               # adds adapter modules, freezes the base
>>> compacter.count_parameters(model)                           # (trainable, total)
>>> compacter.save_adapters(model, "my-adapter")                # adapter_model.safetensors + adapter_config.json
>>> compacter.load_adapters(base_model, "my-adapter")                # or a Hub repo: "user/my-adapter"
>>> compacter.push_adapters(model, "user/my-adapter")           # upload to the Hugging Face Hub
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_adapters, push_adapters, read_adapter_config, save_adapters
from .config import DEFAULT_LEARNING_RATES, METHODS, CompacterConfig
from .inject import (
    active_adapter,
    add_adapters,
    count_parameters,
    delete_adapter,
    disable_adapters,
    list_adapters,
    set_active_adapter,
    trainable_parameters,
)
from .phm import LowRankLinear, PHMLinear, PHMRule, kronecker_sum
from .placement import PLACEMENTS

__all__ = [
    "CheckpointError", "CompacterConfig", "DEFAULT_LEARNING_RATES", "METHODS", "PLACEMENTS",
    "LowRankLinear", "PHMLinear", "PHMRule", "active_adapter", "add_adapters", "count_parameters",
    "delete_adapter", "disable_adapters", "kronecker_sum", "list_adapters", "load_adapters",
    "push_adapters", "read_adapter_config", "save_adapters", "set_active_adapter", "trainable_parameters",
]
