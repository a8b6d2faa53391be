"""Peer methods for comparisons in the same training pipeline: PEFT LoRA (today's standard baseline)
and AdapterHub ``adapters``' Compacter and Compacter++ (the peer implementation of our method).

A peer run uses the same data, loop, selection and test as ours; its trained tensors are saved as
``peer_model.safetensors`` (plus ``peer_config.json``, the method) instead of an adapter checkpoint.
The CLI's ``evaluate``/``predict`` read it inside its run directory: ``add_peer`` with the run's
config.json options, then the tensors (``training.restore_trained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoint import CheckpointError, _atomic_write, _read_weights
from .config import DEFAULT_LEARNING_RATES
from .inject import body_prefix

PEER_METHODS = ("peft-lora", "ah-compacter++", "ah-compacter")
PEER_LEARNING_RATES = {"peft-lora": 3e-4, "ah-compacter++": 3e-3, "ah-compacter": 3e-3}
PEER_WEIGHTS = "peer_model.safetensors"
PEER_CONFIG = "peer_config.json"


def default_learning_rate(method: str) -> float | None:
    """The learning rate a method trains at unless told otherwise: the paper's for our methods,
    the peers' own; None for an unknown method."""
    return PEER_LEARNING_RATES.get(method, DEFAULT_LEARNING_RATES.get(method))


_TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "encoder": "SEQ_CLS", "decoder": "CAUSAL_LM"}


def add_peer(model: nn.Module, method: str, family: str, options: dict) -> nn.Module:
    """Wrap ``model`` with the peer method; ``options`` override the peer's own defaults
    (LoRA: r=8, alpha=16 on PEFT's default targets for the model type, ours in ``_LORA_TARGETS``
    where PEFT has none, else ``target_modules`` must be given; AdapterHub: its
    ``CompacterPlusPlusConfig`` / ``CompacterConfig``)."""
    if method == "peft-lora":
        return _add_peft_lora(model, family, options)
    if method in ("ah-compacter++", "ah-compacter"):
        return _add_adapterhub(model, method, family, options)
    raise ValueError(f"unknown peer method {method!r}; allowed: {', '.join(PEER_METHODS)}")


def _add_peft_lora(model: nn.Module, family: str, options: dict) -> nn.Module:
    try:
        import peft
    except ImportError:
        raise ImportError("--method peft-lora needs PEFT: pip install 'compacter[bench]'") from None
    defaults = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "task_type": _TASK_TYPES[family]}
    targets = _lora_targets(peft, model, options)
    if targets is not None:
        defaults["target_modules"] = targets
    if family == "encoder":  # the whole new head, as ours and AdapterHub's train it: PEFT's default
        # (classifier, score) would leave DistilBERT's pre_classifier and DeBERTa's pooler frozen at random init
        defaults["modules_to_save"] = _outside_body(model)
    config = _lora_config(peft, defaults, options)
    return peft.get_peft_model(model, config)


#: LoRA targets for model types PEFT has no default for (its error only says to specify target_modules):
#: the attention's query and value projections, as PEFT's defaults elsewhere (BERT's query/value, Llama's q_proj/v_proj)
_LORA_TARGETS = {
    "distilbert": ["q_lin", "v_lin"],
    **dict.fromkeys(("albert", "camembert", "xlm-roberta-xl", "roberta-prelayernorm", "megatron-bert", "ernie", "roformer",
                     "data2vec-text"), ["query", "value"]),
    **dict.fromkeys(("mpnet", "longt5", "umt5"), ["q", "v"]),
    # the Llama and BART layouts of the placement table that PEFT does not list
    **dict.fromkeys(("vaultgemma", "olmo", "olmo2", "olmo3", "smollm3", "granite", "cohere", "cohere2", "helium", "glm", "glm4",
                     "exaone4", "seed_oss", "arcee", "apertus", "nemotron", "hunyuan_v1_dense", "ernie4_5", "ministral",
                     "starcoder2", "biogpt", "xglm", "m2m_100", "blenderbot", "blenderbot-small", "plbart", "mbart", "marian",
                     "pegasus"), ["q_proj", "v_proj"]),
    # LED's and BigBird-Pegasus's encoders wrap a Longformer / BigBird attention (query, value), their decoders BART's
    **dict.fromkeys(("led", "bigbird_pegasus"), ["q_proj", "v_proj", "query", "value"]),
    # fused projections (as GPT-2's c_attn, PEFT's own default there): one rank-8 LoRA covers q, k and v together.
    # Phi-3's qkv_proj is (n_heads + 2 n_kv_heads) * head_dim wide.
    "phi3": ["qkv_proj"],
    "persimmon": ["query_key_value"],
    "modernbert": ["Wqkv"],
}


def _lora_targets(peft, model: nn.Module, options: dict) -> list[str] | None:
    """The LoRA ``target_modules`` to set: None where the user names targets (``target_modules`` or
    ``target_parameters``) or PEFT has its own default for the model type; ours for the types in
    ``_LORA_TARGETS``; any other type is a ValueError naming it and how to pass targets, before the
    model is touched (PEFT's own error names neither the model type nor --adapter)."""
    if options.get("target_modules") is not None or options.get("target_parameters"):
        return None
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype in _LORA_TARGETS:
        return list(_LORA_TARGETS[mtype])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # what LoraModel looks up

    if mtype in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return None
    body = body_prefix(model)
    scope = getattr(model, body) if body is not None else model
    linears = sorted({name.rsplit(".", 1)[-1] for name, m in scope.named_modules() if isinstance(m, nn.Linear) and name})
    shown = ", ".join(linears[:16]) + (", ..." if len(linears) > 16 else "")
    raise ValueError(
        f"--method peft-lora: PEFT has no default LoRA target modules for model type {mtype!r} ({type(model).__name__}); "
        "name the layers to adapt (module names, matched against each module name's end; PEFT's defaults elsewhere are mostly "
        f"the attention's query and value projections){f'; its linear layers: {shown}' if shown else ''}. On the command line: "
        "--adapter 'target_modules=[\"query\",\"value\"]'; in Python: TrainConfig(method=\"peft-lora\", "
        "adapter={\"target_modules\": [\"query\", \"value\"]}) or add_peer(model, \"peft-lora\", family, "
        "{\"target_modules\": [...]})")


#: LoraConfig fields the pipeline sets itself (from the model family; PEFT's own bookkeeping)
_LORA_SET_HERE = ("task_type", "peft_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision", "inference_mode")


def _lora_config(peft, defaults: dict, options: dict):
    """``peft.LoraConfig`` of the defaults and ``options`` (``--adapter``); a ValueError naming
    --adapter and the key for an unknown key (listing the allowed ones), a value of the wrong
    type, or a value LoraConfig refuses, before the model is touched."""
    import dataclasses

    allowed = sorted(f.name for f in dataclasses.fields(peft.LoraConfig) if f.init and f.name not in _LORA_SET_HERE)
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        taken = [k for k in unknown if k in _LORA_SET_HERE]
        why = f" ({', '.join(taken)}: set by compacter, not an option)" if taken else ""
        raise ValueError(f"--adapter {', '.join(unknown)}: not an option of peft.LoraConfig for --method peft-lora{why}; "
                         f"allowed: {', '.join(allowed)}")
    hints = _lora_hints(peft)
    for key, value in options.items():
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(f"--adapter {key}={value!r} (--method peft-lora): expected {_describe(hints[key])}, "
                             f"got {type(value).__name__}")
    # checked by PEFT only while it wraps the model, layer by layer: here, before the model is touched
    if "r" in options and not (isinstance(options["r"], int) and options["r"] >= 1):
        raise ValueError(f"--adapter r={options['r']!r} (--method peft-lora): the LoRA rank must be a positive integer")
    if isinstance(options.get("lora_dropout"), (int, float)) and not 0 <= options["lora_dropout"] < 1:
        raise ValueError(f"--adapter lora_dropout={options['lora_dropout']!r} (--method peft-lora): a dropout probability "
                         "must lie in [0, 1)")
    try:
        return peft.LoraConfig(**{**defaults, **options})
    except (TypeError, ValueError) as err:
        bad = [k for k in options if _refused(peft, defaults, k, options[k])] or list(options)
        shown = ", ".join(f"{k}={options[k]!r}" for k in bad) or "(no options)"
        raise ValueError(f"--adapter {shown} (--method peft-lora): peft.LoraConfig refuses it: {err}") from None


def _refused(peft, defaults: dict, key: str, value) -> bool:
    """Whether LoraConfig refuses ``key=value`` alone with the defaults (which option to name)."""
    try:
        peft.LoraConfig(**{**defaults, key: value})
    except (TypeError, ValueError):
        return True
    return False


def _lora_hints(peft) -> dict:
    import typing

    try:
        return typing.get_type_hints(peft.LoraConfig)
    except Exception:  # an annotation this Python cannot resolve: LoraConfig's own checks remain
        return {}


def _fits_placeholder(value, literal) -> bool:
    """Whether ``value`` is a string that fills a Literal placeholder ("pissa_niter_4" for
    "pissa_niter_[number of iters]"): the text before the bracket, then anything."""
    if not (isinstance(value, str) and isinstance(literal, str) and "[" in literal and literal.endswith("]")):
        return False
    prefix = literal[:literal.index("[")]
    return value.startswith(prefix) and len(value) > len(prefix)


def _fits(value, hint) -> bool:
    """Whether ``value`` (as ``--adapter`` parses it: JSON) fits a LoraConfig annotation; an
    annotation this does not know (PEFT's config classes) is left to LoraConfig."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):  # PEFT annotates some numbers int that take floats too (lora_alpha=16.5): LoraConfig has the last word
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is typing.Literal:  # a placeholder such as 'pissa_niter_[number of iters]' stands for a family of strings
        return any((value == a and type(value) is type(a)) or _fits_placeholder(value, a) for a in args)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(_fits(value, a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is list:
        return isinstance(value, list)
    if isinstance(hint, type) and hint.__module__ == "builtins":
        return isinstance(value, hint)
    return True


def _describe(hint) -> str:
    """A reader's name for a LoraConfig annotation ("int", "one of 'none', 'all', 'lora_only'", ...)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        # sorted, null last: typing caches equal Unions, so args come in whichever order was built first
        parts = sorted((_describe(a) for a in args), key=lambda part: (part == "null", part))
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin in (list, tuple):
        inner = _describe(args[0]) if args else ""
        plural = {"an integer": "integers", "a string": "strings", "a number": "numbers"}.get(inner, f"({inner})")
        return f"a list of {plural}" if args else "a list"
    if origin is dict or hint is dict:
        return "an object"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _outside_body(model: nn.Module) -> list[str]:
    """The root's children outside the pretrained body that hold a task-head module (an encoder's
    new head): the head our methods train by default (``head_modules``, found by the same
    ``body_prefix`` and :func:`~compacter.inject.in_head`). Not every child outside the body:
    ModernBERT's ``head`` is a pretrained dense + norm (its masked-LM transform), which our methods
    keep frozen, so the peers must too."""
    from .config import CompacterConfig
    from .inject import in_head

    prefix = body_prefix(model)
    if prefix is None:
        raise ValueError(f"{type(model).__name__} has no pretrained body named by base_model_prefix: cannot tell its head")
    config = CompacterConfig()
    return [name for name, child in model.named_children()
            if name != prefix and any(in_head(f"{name}.{p}", config, prefix) for p, _ in child.named_parameters())]


def _add_adapterhub(model: nn.Module, method: str, family: str, options: dict) -> nn.Module:
    """AdapterHub's own Compacter(++) as its users run it: ``adapters.init``, ``add_adapter``,
    ``train_adapter`` (which freezes everything else, layer norms included). An encoder's new task
    head is trained too, as ours is; AdapterHub's own flex heads would be."""
    try:
        import adapters
    except ImportError:
        raise ImportError(f"--method {method} needs AdapterHub's `adapters`, which pins transformers 4.x: run it in "
                          "its own environment (the README's command-line section shows the venv)") from None
    config_class = adapters.CompacterPlusPlusConfig if method == "ah-compacter++" else adapters.CompacterConfig
    adapters.init(model)
    model.add_adapter("peer", config=config_class(**options))
    model.train_adapter("peer")
    if family == "encoder":
        for name in _outside_body(model):
            getattr(model, name).requires_grad_(True)
    return model


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of a peer-wrapped model, by name, each once."""
    seen, out = set(), {}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


def save_peer(model: nn.Module, folder: Path, method: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in trained_tensors(model).items()}
    # safetensors writes owner-only (0600) files; give this one the umask's mode, as our adapter files get
    _atomic_write(folder / PEER_WEIGHTS, lambda path: save_file(tensors, path))
    (folder / PEER_CONFIG).write_text(json.dumps({"method": method}) + "\n")


def peer_method(folder: Path) -> str | None:
    """The method ``folder``/peer_config.json names (None when there is no such file); a file that
    is not a JSON object naming one of PEER_METHODS is a CheckpointError naming it."""
    file = Path(folder) / PEER_CONFIG
    if not file.is_file():
        return None
    try:
        method = json.loads(file.read_text()).get("method")
    except (ValueError, OSError, AttributeError) as err:
        raise CheckpointError(f"{file}: not a JSON object naming the peer method ({err})") from None
    if method not in PEER_METHODS:
        raise CheckpointError(f"{file}: method {method!r} is not a peer method ({', '.join(PEER_METHODS)})")
    return method


def read_peer(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder``/peer_model.safetensors; a missing or damaged file is a CheckpointError naming it."""
    return _read_weights(folder, PEER_WEIGHTS, "peer weights")[0]
