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


def count_methods(name: str, methods: list[str], overrides: dict[str, Any] | None = None,
                  skip_unfit: bool = False) -> list[dict[str, Any]]:
    """``[{method, trainable, total, percent}]``; ``percent`` is of the base model's parameters.
    ``skip_unfit``: a method the model cannot hold (adapterdrop's 5 dropped layers on a model of 5
    or fewer) is a row ``{method, unfit: reason}`` instead of an error."""
    rows = []
    base = count_parameters(empty_model(name))[1]
    for method in methods:
        model = empty_model(name)
        config = CompacterConfig(method, **(overrides or {}))
        try:
            add_adapters(model, config)
        except ValueError as err:
            if not (skip_unfit and config.drop_first_layers):  # any other problem is the model's, for every method
                raise
            rows.append({"method": method, "unfit": str(err)})
            continue
        trainable, total = count_parameters(model)
        rows.append({"method": method, "trainable": trainable, "total": total, "percent": 100 * trainable / base})
    return rows


def params_table(name: str, methods: list[str], overrides: dict[str, Any] | None = None, skip_unfit: bool = False) -> str:
    rows = count_methods(name, methods, overrides, skip_unfit)
    lines = [f"model {name}", "| method | trainable | total | % of base |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['trainable']:,} | {r['total']:,} | {r['percent']:.4f} |" for r in rows if "unfit" not in r]
    lines += [f"(not on this model: {r['method']}: {r['unfit']})" for r in rows if "unfit" in r]
    return "\n".join(lines)
