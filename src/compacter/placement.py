"""Where the adapters go in each architecture: the only module that knows transformers' layouts.

An adapter is applied to the *output of a sub-layer's last projection*, i.e. before the block's
dropout and residual connection, as in the released Compacter code. Patterns are regular
expressions matched in full against module names (``model.named_modules()``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Placement:
    """Regexes for the module whose output is the self-attention (resp. feed-forward) sub-layer output."""

    attention: tuple[str, ...]
    ffn: tuple[str, ...]


_T5 = Placement(attention=(r".*\.layer\.0\.SelfAttention\.o",), ffn=(r".*\.DenseReluDense\.wo",))
_BART = Placement(attention=(r".*layers\.\d+\.self_attn\.out_proj",), ffn=(r".*layers\.\d+\.fc2",))
_BERT = Placement(attention=(r".*layer\.\d+\.attention\.output\.dense",), ffn=(r".*layer\.\d+\.output\.dense",))
_DISTILBERT = Placement(attention=(r".*layer\.\d+\.attention\.out_lin",), ffn=(r".*layer\.\d+\.ffn\.lin2",))
_GPT2 = Placement(attention=(r".*h\.\d+\.attn\.c_proj",), ffn=(r".*h\.\d+\.mlp\.c_proj",))
_LLAMA = Placement(attention=(r".*layers\.\d+\.self_attn\.o_proj",), ffn=(r".*layers\.\d+\.mlp\.down_proj",))

#: model_type -> placement. Cross-attention gets no adapter (as in the paper).
PLACEMENTS: dict[str, Placement] = {
    **dict.fromkeys(("t5", "mt5", "umt5"), _T5),
    **dict.fromkeys(("bart", "mbart", "marian", "pegasus"), _BART),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2"), _BERT),
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"), _LLAMA),
}

#: Class-name suffixes of normalisation layers ("the model's layer norms", trained by default).
_NORM_SUFFIXES = ("LayerNorm", "RMSNorm")


def model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def placement_for(model: nn.Module, attention: tuple[str, ...] | None, ffn: tuple[str, ...] | None,
                  roles: tuple[str, ...] = ("attention", "ffn")) -> Placement:
    """The placement for ``model``: the user's patterns where given, else the table's entry.
    ``roles``: the sites the method uses; patterns for those suffice on a model the table lacks
    (Compacter++ needs only ``ffn``)."""
    given = {"attention": attention, "ffn": ffn}
    if all(given[role] is not None for role in roles):
        return Placement(attention or (), ffn or ())
    mtype = model_type(model)
    known = PLACEMENTS.get(mtype)
    if known is None:
        raise ValueError(
            f"no adapter placement is known for model_type={mtype!r} ({type(model).__name__}); "
            f"known: {', '.join(sorted(PLACEMENTS))}. Name the modules yourself with regexes over "
            "model.named_modules(), e.g. CompacterConfig(attention_modules=[r'.*layers\\.\\d+\\.attn\\.out_proj'], "
            "ffn_modules=[r'.*layers\\.\\d+\\.mlp\\.fc_out']) (methods that use only the feed-forward site, "
            f"such as compacter++, need only ffn_modules; this one needs {' and '.join(r + '_modules' for r in roles)}); "
            "on the command line, JSON lists: --adapter 'attention_modules=[\".*attn\\\\.out_proj\"]' "
            "--adapter 'ffn_modules=[\".*mlp\\\\.fc_out\"]'"
        )
    return Placement(attention if attention is not None else known.attention, ffn if ffn is not None else known.ffn)


def match_modules(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the modules whose full name matches one of ``patterns``, in model order."""
    compiled = [re.compile(p) for p in patterns]
    return [name for name, _ in model.named_modules() if name and any(c.fullmatch(name) for c in compiled)]


def output_features(module: nn.Module, name: str) -> int:
    """Width of a module's output: ``out_features`` (Linear), ``nf`` (GPT-2 Conv1D) or the weight's first dim."""
    for attr in ("out_features", "nf"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2 and not isinstance(module, nn.Embedding):  # an embedding's weight is [vocab, width]
        return weight.shape[0]
    raise ValueError(f"cannot tell the output width of {name} ({type(module).__name__}): target a Linear-like module")


def is_norm(module: nn.Module) -> bool:
    """A layer norm or RMS norm, by type or by the class-name convention of transformers."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(_NORM_SUFFIXES)
