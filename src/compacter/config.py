"""`CompacterConfig`: one frozen, validated dataclass for every method, and the method presets.

Every method is a preset of one configurable bottleneck adapter (as in AdapterHub):

| method          | adapter      | placement            | projections                                   |
|-----------------|--------------|----------------------|-----------------------------------------------|
| compacter       | phm          | attention + ffn      | LPHM, n=4, rank 1, one shared rule A          |
| compacter++     | phm          | ffn                  | LPHM, n=4, rank 1, one shared rule A          |
| phm-adapter     | phm          | attention + ffn      | PHM, n=12, full B_i, each layer its own A_i   |
| adapter         | linear       | attention + ffn      | dense (Houlsby)                               |
| pfeiffer        | linear       | ffn                  | dense                                         |
| adapterdrop     | linear       | attention + ffn      | dense, none in each stack's first 5 layers    |
| adapter-lowrank | lowrank      | attention + ffn      | W = u vᵀ, rank 1                              |
| bitfit          | none         | —                    | bias terms only (+ layer norms)               |
| full            | none         | —                    | every weight                                  |

The defaults follow the paper's released configs (reduction factor 32, GELU "gelu_new",
phm_init_range 1e-4, Glorot-uniform fast weights, layer norms trained), with two deviations
(README, Methods): the fast weights' Glorot init is the standard one of the paper's text, while
the released code's has gain √2 (phm_init="glorot-uniform-released"); BitFit on T5 trains the layer-norm scales beside the added
linear biases, where the released code adds biases to the layer norms instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .phm import PHM_INITS, RULE_INITS

METHODS = ("compacter", "compacter++", "phm-adapter", "adapter", "pfeiffer", "adapterdrop", "adapter-lowrank", "bitfit",
           "full")
ADAPTER_TYPES = ("phm", "lowrank", "linear", "none")
NON_LINEARITIES = ("gelu_new", "gelu", "relu", "silu", "swish", "tanh", "identity")
FORMAT_VERSION = 1

#: The paper's learning rates per method (PAPER.md §3).
DEFAULT_LEARNING_RATES = {
    "compacter": 3e-3,
    "compacter++": 3e-3,
    "phm-adapter": 3e-3,
    "adapter-lowrank": 3e-3,
    "adapter": 3e-4,
    "pfeiffer": 3e-4,
    "adapterdrop": 3e-4,
    "bitfit": 3e-4,
    "full": 3e-4,
}

_COMPACTER = dict(adapter_type="phm", phm_dim=4, phm_rank=1, factorized_phm=True, shared_phm_rule=True, phm_init_range=1e-4)
PRESETS: dict[str, dict[str, Any]] = {
    "compacter": dict(_COMPACTER, after_attention=True, after_ffn=True),
    "compacter++": dict(_COMPACTER, after_attention=False, after_ffn=True),
    "phm-adapter": dict(
        adapter_type="phm", phm_dim=12, factorized_phm=False, shared_phm_rule=False, phm_init_range=0.01,
        after_attention=True, after_ffn=True,
    ),
    "adapter": dict(adapter_type="linear", after_attention=True, after_ffn=True),
    "pfeiffer": dict(adapter_type="linear", after_attention=False, after_ffn=True),
    # the paper's AdapterDrop baseline: Houlsby adapters, none in the first 5 layers of the encoder and of the decoder
    "adapterdrop": dict(adapter_type="linear", after_attention=True, after_ffn=True, drop_first_layers=5),
    "adapter-lowrank": dict(adapter_type="lowrank", lowrank_rank=1, after_attention=True, after_ffn=True),
    "bitfit": dict(adapter_type="none", after_attention=False, after_ffn=False, train_biases=True),
    "full": dict(adapter_type="none", after_attention=False, after_ffn=False, train_all=True),
}


#: Fields added after format 1, written only when set: an adapter that does not use them stays readable
#: by the versions before them (which refuse unknown fields); reading fills in the default.
_OMITTED_AT_DEFAULT = frozenset({"drop_first_layers"})


class ConfigError(ValueError):
    """An invalid :class:`CompacterConfig`; ``problems`` lists each problem, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid CompacterConfig:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class CompacterConfig:
    """The whole recipe of one adapter: which method, where it goes, and every PHM option.

    Build it from a preset and override any field: ``CompacterConfig("compacter", phm_dim=8)``.
    Invalid values raise one ``ValueError`` that lists every problem.
    """

    method: str = "compacter++"
    adapter_type: str = "phm"
    #: Adapter after the self-attention sub-layer (Compacter, Houlsby) and/or after the feed-forward one.
    after_attention: bool = False
    after_ffn: bool = True
    #: Bottleneck size = d_model // reduction_factor unless ``bottleneck_dim`` is given.
    reduction_factor: int = 32
    bottleneck_dim: int | None = None
    non_linearity: str = "gelu_new"
    adapter_bias: bool = True
    # --- PHM (Compacter / PHM-Adapter) ---
    phm_dim: int = 4
    phm_rank: int = 1
    #: B_i = s_i t_iᵀ (low-rank fast weights, Compacter) or a full B_i (PHM-Adapter).
    factorized_phm: bool = True
    #: One rule A [n, n, n] for the whole model, or one per PHM layer.
    shared_phm_rule: bool = True
    #: Train the rule A (False freezes it at its initialisation).
    learn_phm: bool = True
    #: Init of the fast weights (s, t or B) and of Adapter-LowRank's u, v: "glorot-uniform" and
    #: "glorot-normal" are standard Glorot, as in the paper's text; "glorot-uniform-released" and
    #: "glorot-normal-released" the released code's (gain √2, so √2 times wider); "normal": normal(0, 0.01).
    phm_init: str = "glorot-uniform"
    phm_rule_init: str = "normal"
    phm_init_range: float = 1e-4
    # --- plain and low-rank adapters ---
    adapter_init_std: float = 0.01
    lowrank_rank: int = 1
    # --- what else is trained ---
    train_layer_norms: bool = True
    train_head: bool = True
    #: Task-head modules trained when ``train_head``: a name matches a module's last path component,
    #: outside the pretrained body (``base_model_prefix``) where the model has one, so DeBERTa's new
    #: top-level ``pooler`` is trained and BERT's pretrained ``bert.pooler`` is not; a dotted entry
    #: ("bert.pooler") names one module by its whole path, inside the body too. A bare body
    #: (``BertModel``, what AutoModel loads) has no body prefix: its ``pooler`` matches and is
    #: trained (pass ``head_modules=()`` to keep it frozen). ``start_logits``, ``end_logits`` and
    #: ``answer_class`` are XLNet's question-answering head, ``qa_classifier`` BigBird's.
    head_modules: tuple[str, ...] = ("classifier", "pre_classifier", "classification_head", "score", "qa_outputs", "pooler",
                                     "sequence_summary", "logits_proj", "multiple_choice_head",
                                     "start_logits", "end_logits", "answer_class", "qa_classifier")
    train_biases: bool = False
    #: BitFit on models without biases (T5, Llama): add zero-initialised biases to the block's linear layers.
    add_missing_biases: bool = True
    train_all: bool = False
    #: AdapterDrop: no adapter in the first N layers of each stack (encoder and decoder counted apart).
    #: A site's layer is the number in its module name that differs between the sites of its stack
    #: (``encoder.block.3...`` -> 3; a wrapper's ``0.`` prefix does not count); refused on ALBERT.
    drop_first_layers: int = 0
    # --- placement override: regexes matched (fullmatch) against module names ---
    attention_modules: tuple[str, ...] | None = None
    ffn_modules: tuple[str, ...] | None = None

    def __init__(self, method: str = "compacter++", **overrides: Any):
        # A preset first, then the user's overrides; every problem is reported at once.
        if method not in PRESETS:
            raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
        names = {f.name for f in dataclasses.fields(self)} - {"method"}
        unknown = sorted(set(overrides) - names)
        problems = [f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}"] if unknown else []
        overrides = {k: v for k, v in overrides.items() if k in names}
        values: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(self) if f.name != "method"}
        values.update(PRESETS[method])
        values.update(overrides)
        for key in ("head_modules", "attention_modules", "ffn_modules"):
            if isinstance(values[key], str):
                values[key] = (values[key],)
            elif isinstance(values[key], (list, tuple)):
                values[key] = tuple(values[key])  # anything else is left for _validate to name
        object.__setattr__(self, "method", method)
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self._validate(problems)

    def _validate(self, problems: list[str]) -> None:

        def check(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        def positive_int(name: str) -> None:
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name} must be a positive int, got {v!r}")

        def boolean(name: str) -> None:
            check(isinstance(getattr(self, name), bool), f"{name} must be a bool, got {getattr(self, name)!r}")

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, name)
            check(v in allowed, f"{name}={v!r} is not one of {', '.join(allowed)}")

        choice("adapter_type", ADAPTER_TYPES)
        choice("non_linearity", NON_LINEARITIES)
        choice("phm_init", PHM_INITS)
        choice("phm_rule_init", RULE_INITS)
        for name in ("reduction_factor", "phm_dim", "phm_rank", "lowrank_rank"):
            positive_int(name)
        if self.bottleneck_dim is not None:
            positive_int("bottleneck_dim")
        v = self.drop_first_layers
        check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"drop_first_layers must be an int >= 0, got {v!r}")
        for name in ("after_attention", "after_ffn", "adapter_bias", "factorized_phm", "shared_phm_rule", "learn_phm",
                     "train_layer_norms", "train_head", "train_biases", "add_missing_biases", "train_all"):
            boolean(name)
        for name in ("phm_init_range", "adapter_init_std"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                  f"{name} must be a positive finite number, got {v!r}")
        for name in ("head_modules", "attention_modules", "ffn_modules"):
            v = getattr(self, name)
            # None (the method's placement) only for the placement overrides: no head modules is an empty list
            ok = (v is None and name != "head_modules") or (isinstance(v, tuple) and all(isinstance(s, str) and s for s in v))
            check(ok, f"{name} must be a list of non-empty strings{' (an empty list for none)' if name == 'head_modules' else ''}, got {v!r}")
            if ok and v is not None and name != "head_modules":  # placement patterns are regexes
                for i, pattern in enumerate(v):
                    try:
                        re.compile(pattern)
                    except re.error as err:
                        problems.append(f"{name}[{i}] {pattern!r} is not a valid regular expression ({err})")
        if self.train_all and self.adapter_type != "none":
            problems.append(f"train_all=True trains every base weight and cannot be combined with adapters "
                            f"(adapter_type={self.adapter_type!r}); use method 'full' or adapter_type='none'")
        if self.adapter_type != "none":
            check(self.after_attention or self.after_ffn, f"adapter_type={self.adapter_type!r} needs after_attention or after_ffn")
        if self.adapter_type == "phm" and isinstance(self.phm_dim, int) and self.phm_dim == 1:
            problems.append("phm_dim must be at least 2 (n=1 is a plain low-rank adapter: use adapter-lowrank)")
        if problems:
            raise ConfigError(problems)

    # ---- derived values ----
    @property
    def uses_adapters(self) -> bool:
        return self.adapter_type != "none"

    def bottleneck(self, d_model: int) -> int:
        """Bottleneck size for a sub-layer of width ``d_model``."""
        return self.bottleneck_dim if self.bottleneck_dim is not None else max(1, d_model // self.reduction_factor)

    @property
    def learning_rate(self) -> float:
        """The paper's learning rate for this method."""
        return DEFAULT_LEARNING_RATES[self.method]

    # ---- serialisation ----
    def to_dict(self) -> dict[str, Any]:
        preset = PRESETS[self.method]
        # omitted only where reading rebuilds the same value: adapterdrop's preset sets drop_first_layers=5,
        # so its 0 must be written
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if not (f.name in _OMITTED_AT_DEFAULT and getattr(self, f.name) == f.default == preset.get(f.name, f.default))}
        for key in ("head_modules", "attention_modules", "ffn_modules"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CompacterConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise ``ValueError``."""
        data = dict(data)
        method = data.pop("method", "compacter++")
        return cls(method, **data)

    @classmethod
    def from_json(cls, text: str) -> "CompacterConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "CompacterConfig":
        """A copy with some fields changed (the config itself is frozen). The method cannot be
        changed this way: it names a preset, so build ``CompacterConfig(method, ...)`` instead."""
        if "method" in changes and changes["method"] != self.method:
            raise ValueError(f"replace cannot change the method ({self.method!r} -> {changes['method']!r}): its preset "
                             f"sets other fields too; build CompacterConfig({changes['method']!r}, ...) instead")
        data = self.to_dict()
        data.update(changes)
        return CompacterConfig.from_dict(data)
