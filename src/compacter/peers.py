"""Peer methods for comparisons in the same training pipeline: PEFT LoRA (today's standard baseline)
and AdapterHub ``adapters``' Compacter and Compacter++ (the peer implementation of our method).

A peer run uses the same data, loop, selection and test as ours; its trained tensors are saved as
``peer_model.safetensors`` (plus ``peer_config.json``) instead of an adapter checkpoint. The CLI's
``evaluate``/``predict`` read only our adapter checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import _atomic_write
from .config import DEFAULT_LEARNING_RATES
from .inject import body_prefix

PEER_METHODS = ("peft-lora", "ah-compacter++", "ah-compacter")
PEER_LEARNING_RATES = {"peft-lora": 3e-4, "ah-compacter++": 3e-3, "ah-compacter": 3e-3}
PEER_WEIGHTS = "peer_model.safetensors"


def default_learning_rate(method: str) -> float | None:
    """The learning rate a method trains at unless told otherwise: the paper's for our methods,
    the peers' own; None for an unknown method."""
    return PEER_LEARNING_RATES.get(method, DEFAULT_LEARNING_RATES.get(method))


_TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "encoder": "SEQ_CLS", "decoder": "CAUSAL_LM"}


def add_peer(model: nn.Module, method: str, family: str, options: dict) -> nn.Module:
    """Wrap ``model`` with the peer method; ``options`` override the peer's own defaults
    (LoRA: r=8, alpha=16; AdapterHub: its ``CompacterPlusPlusConfig`` / ``CompacterConfig``)."""
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
    if family == "encoder":  # the whole new head, as ours and AdapterHub's train it: PEFT's default
        # (classifier, score) would leave DistilBERT's pre_classifier and DeBERTa's pooler frozen at random init
        defaults["modules_to_save"] = _outside_body(model)
    config = peft.LoraConfig(**{**defaults, **options})
    return peft.get_peft_model(model, config)


def _outside_body(model: nn.Module) -> list[str]:
    """The root's children with parameters outside the pretrained body (an encoder's task head):
    the head our methods train, found by the same ``body_prefix``."""
    prefix = body_prefix(model)
    if prefix is None:
        raise ValueError(f"{type(model).__name__} has no pretrained body named by base_model_prefix: cannot tell its head")
    return [name for name, child in model.named_children() if name != prefix and any(True for _ in child.parameters())]


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
    (folder / "peer_config.json").write_text(json.dumps({"method": method}) + "\n")


def read_peer(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder``/peer_model.safetensors; a missing or damaged file is a CheckpointError naming it."""
    from safetensors import SafetensorError

    from .checkpoint import CheckpointError

    file = folder / PEER_WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{file}: no peer weights here")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({err})") from None
