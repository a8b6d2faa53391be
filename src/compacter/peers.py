"""Peer methods for comparisons in the same training pipeline: PEFT LoRA (today's standard baseline).

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

PEER_METHODS = ("peft-lora",)
PEER_LEARNING_RATES = {"peft-lora": 3e-4}
PEER_WEIGHTS = "peer_model.safetensors"
_TASK_TYPES = {"seq2seq": "SEQ_2_SEQ_LM", "encoder": "SEQ_CLS", "decoder": "CAUSAL_LM"}


def add_peer(model: nn.Module, method: str, family: str, options: dict) -> nn.Module:
    """Wrap ``model`` with the peer method; ``options`` override the LoRA defaults (r=8, alpha=16)."""
    if method != "peft-lora":
        raise ValueError(f"unknown peer method {method!r}; allowed: {', '.join(PEER_METHODS)}")
    try:
        import peft
    except ImportError:
        raise ImportError("--method peft-lora needs PEFT: pip install 'compacter[bench]'") from None
    config = peft.LoraConfig(**{"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "task_type": _TASK_TYPES[family], **options})
    return peft.get_peft_model(model, config)


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
    save_file({k: v.detach().cpu().contiguous() for k, v in trained_tensors(model).items()}, folder / PEER_WEIGHTS)
    (folder / "peer_config.json").write_text(json.dumps({"method": method}) + "\n")


def read_peer(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / PEER_WEIGHTS)
