"""Parameter counts of every method on a model, built from its config alone (meta device, no weights)."""

from __future__ import annotations

from typing import Any

import torch

from .config import CompacterConfig
from .inject import add_adapters, count_parameters

#: Shapes of models whose configs may not be at hand offline (random weights, real sizes).
KNOWN_SHAPES = {
    "t5-small-shapes": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=32128),
    "t5-base-shapes": dict(d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=32128),
    "t5-large-shapes": dict(d_model=1024, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16, d_kv=64, vocab_size=32128),
}


def model_config(name: str):
    """The config of a known shape (``t5-base-shapes``) or of the model at ``name``; an unreadable
    one is a ValueError naming --model (:func:`~compacter.modeling.read_model_config`)."""
    import transformers as T

    from .modeling import read_model_config

    if name in KNOWN_SHAPES:
        return T.T5Config(**KNOWN_SHAPES[name])
    return read_model_config(name)


def empty_model(name: str) -> torch.nn.Module:
    """The model's architecture on the meta device: shapes without memory or weights."""
    import transformers as T

    from .modeling import family_of

    config = model_config(name)
    family = family_of(config)
    auto = {"seq2seq": T.AutoModelForSeq2SeqLM, "encoder": T.AutoModelForSequenceClassification,
            "decoder": T.AutoModelForCausalLM}[family]
    with torch.device("meta"):
        return auto.from_config(config)


def count_methods(name: str, methods: list[str], overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``[{method, trainable, total, percent}]``; ``percent`` is of the base model's parameters."""
    rows = []
    base = count_parameters(empty_model(name))[1]
    for method in methods:
        model = empty_model(name)
        add_adapters(model, CompacterConfig(method, **(overrides or {})))
        trainable, total = count_parameters(model)
        rows.append({"method": method, "trainable": trainable, "total": total, "percent": 100 * trainable / base})
    return rows


def params_table(name: str, methods: list[str], overrides: dict[str, Any] | None = None) -> str:
    rows = count_methods(name, methods, overrides)
    lines = [f"model {name}", "| method | trainable | total | % of base |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['trainable']:,} | {r['total']:,} | {r['percent']:.4f} |" for r in rows]
    return "\n".join(lines)
