"""Put adapters into a transformers model at run time, freeze the rest, and switch adapters.

Nothing of the model's source is copied: for each placement target (see :mod:`compacter.placement`)
an :class:`AdapterSite` (a ``ModuleDict`` of named adapters) becomes a child of the target module,
named ``compacter_adapters``, and a forward hook passes the target's output through the active
adapter. The model root gets one :class:`CompacterState` child, ``compacter``, that owns what is
shared: the slow PHM weights ``A`` (one :class:`~compacter.phm.PHMRule` per adapter name) and the
per-adapter trained copies of base parameters (layer norms, task head, BitFit biases). Activating
an adapter points those base parameters at its copies, so switching costs nothing per forward and
disabling gives back the base model's exact outputs. Owner and state share one Parameter object
per trained tensor, also after a conversion that makes new Parameters (see
:meth:`CompacterState._apply`).

Every public function takes a ``torch.compile`` wrapper as the model it wraps (:func:`unwrap`).

Building is separate from attaching: :func:`build_adapters` makes every module and checks every
shape before the model is touched, so bad input leaves the model unmodified.

Each adapter sits on its target module's device and dtype, and each trained copy where its base
parameter sits, so a model split over devices (``device_map="auto"``) computes every adapter
where its layer computes; the one shared rule of an adapter serves layers on other devices
through a differentiable copy (see :func:`_place_like_model`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapters import BottleneckAdapter
from . import norms
from .config import CompacterConfig
from .phm import PHMLinear, PHMRule, batched_weights
from .placement import is_norm, match_modules, model_type, output_features, placement_for

SITE_ATTR = "compacter_adapters"
STATE_ATTR = "compacter"
_LAYER_INDEX = re.compile(r"(^|.*\.)\d+\..*")  # a module inside a numbered transformer block
FULL_IS_ACTIVE = "method 'full' trains the base weights in place: it is always the active adapter (activate=False is refused)"


def unwrap(model: nn.Module) -> nn.Module:
    """The model a ``torch.compile`` wrapper (``OptimizedModule``, nested too) runs, else ``model``.

    Every public function unwraps first, so ``compacter.save_adapters(torch.compile(model), ...)``
    adds, switches, counts and saves exactly as on the model, under the model's own parameter
    names: through the wrapper, modules were registered on the wrapper and names carried its
    ``_orig_mod.`` prefix."""
    while isinstance(model, torch._dynamo.eval_frame.OptimizedModule):  # no public name for the class in torch 2.x
        model = model._orig_mod
    return model


def _key(param_name: str) -> str:
    return param_name.replace(".", "/")  # ParameterDict keys cannot contain dots


def _unkey(key: str) -> str:
    return key.replace("/", ".")


class AdapterSite(nn.ModuleDict):
    """The named adapters at one placement target; the hook applies the active one to the target's output."""

    def __init__(self, role: str, d_model: int):
        super().__init__()
        self.role, self.d_model = role, d_model
        self.active: str | None = None
        self._state: list[CompacterState] = []  # a plain reference: the owner is not a child of every site
        self._handle = None

    def hook(self, module: nn.Module, args: tuple, output):
        """Forward hook of the target module (registered as :func:`_site_hook`)."""
        if self.active is None:
            return output
        state = self._state[0]
        # a DataParallel replica (a shallow copy: `_state` is the original's) builds no bank and
        # leaves the shared state alone; the original rule reaches its device through a copy
        bank = None if getattr(self, "_is_replica", False) else state.weight_bank()
        rule = state.rule(self.active)
        adapter = self[self.active]
        if isinstance(output, tuple):  # a sub-layer that returns (hidden, extras...)
            return (adapter(output[0], rule, bank),) + tuple(output[1:])
        return adapter(output, rule, bank)

    def extra_repr(self) -> str:
        return f"role={self.role}, d_model={self.d_model}, active={self.active!r}"


def _in_checkpointed_region() -> bool:
    """Whether saved-tensor hooks are on, as inside a non-reentrant ``torch.utils.checkpoint``
    region: activation checkpointing applied outside transformers' own flag (FSDP's or
    Accelerate's ``activation_checkpointing``, a user's wrapper) replays such layers in backward,
    after the root's forward and its bank are gone, and the replay must save what the forward
    saved. (A reentrant region runs its forward without gradients, which declines the bank too.)"""
    if torch.compiler.is_compiling():
        return False
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # no public query in torch 2.x
    return top is not None and top(False) is not None


def _site_hook(module: nn.Module, args: tuple, output):
    """Forward hook of every placement target: the target's own site applies its active adapter.

    A plain function that finds the site through ``module``, not a method bound to one site:
    ``nn.DataParallel`` (the Trainer's choice on several GPUs without a distributed launch)
    copies the hook dicts into replicas whose sites hold the replica's adapter copies; a bound
    method would run the original adapters (on the first GPU) on every replica.
    """
    return getattr(module, SITE_ATTR).hook(module, args, output)


class CompacterState(nn.Module):
    """Owner of what adapters share: the PHM rules and the trained copies of base parameters.

    While the model trains, it also builds all PHM layers' weights ``W`` once per forward pass of
    the model, in one batched product (:func:`~compacter.phm.batched_weights`), instead of layer by
    layer: the first adapter called in a forward pass of the model root builds this "bank", the
    root's forward hook drops it. Layers called outside a forward pass of the root, without
    gradients (the per-layer eval cache serves them), or under activation checkpointing (which
    replays layers after the root's forward has ended: transformers' flag, or any
    ``torch.utils.checkpoint`` region, see :func:`_in_checkpointed_region`) build their own ``W``.
    """

    def __init__(self):
        super().__init__()
        self.rules = nn.ModuleDict()  # adapter name -> PHMRule (shared slow weights A [n, n, n])
        self.tuned = nn.ModuleDict()  # adapter name -> ParameterDict(base param key -> trained copy)
        self.base = nn.ParameterDict()  # base param key -> the base model's own (frozen) parameter
        self.configs: dict[str, CompacterConfig] = {}
        self.active: str | None = None
        self.base_requires_grad: dict[str, bool] = {}
        self.missing: set[str] = set()  # base params that do not exist (BitFit biases added to bias-free layers)
        self.ties: dict[str, list[str]] = {}  # trained base param name -> the other names the base model ties it under
        self._banked: dict[str, list[PHMLinear]] = {}  # adapter name -> its PHM layers, in bank order
        self._bank: list[torch.Tensor] | None = None  # their W during one forward pass of the model
        self._in_forward = False  # between the root's forward pre-hook and the first adapter call
        self._checkpointing: list[nn.Module] = []  # modules with a transformers `gradient_checkpointing` flag
        self._hooks: list = []
        self._root: list[nn.Module] = []  # the model (a plain reference: the model owns the state)
        self._lean_norms: list[nn.Module] = []  # trained RMS norms given the lean forward (compacter.norms)
        self.register_state_dict_post_hook(_drop_shared)
        self.register_load_state_dict_post_hook(_restore_shared)

    def _apply(self, fn, recurse: bool = True):
        """Convert (``model.to()``, ``.double()``, ...) and point the owners at the converted copies.

        A conversion that makes new Parameter objects instead of updating them in place
        (``torch.__future__.set_overwrite_module_params_on_conversion(True)``, devices such as XLA)
        gives each registration of a shared Parameter its own new one: the owner's and this
        state's copy of a trained base parameter would then diverge (training one, saving or
        restoring the other). The state is the root's last child, converted after the modules
        that own those parameters, so pointing the owners at the state's copies (``tuned`` and
        ``base``) again leaves one Parameter per trained tensor; in-place conversion is unchanged.
        """
        super()._apply(fn, recurse)
        if self._root:
            _point_owners(self, dict(self._root[0].named_modules()), self.active)
        return self

    def rule(self, name: str) -> torch.Tensor | None:
        return self.rules[name].A if name in self.rules else None

    def weight_bank(self) -> list[torch.Tensor] | None:
        """The active adapter's W for this forward pass of the model, built on first use."""
        if self._bank is None and self._in_forward:
            self._in_forward = False  # build (or decline) once per forward pass
            layers = self._banked.get(self.active) if self.active is not None else None
            if (layers and torch.is_grad_enabled() and not any(m.gradient_checkpointing for m in self._checkpointing)
                    and not _in_checkpointed_region()):
                self._bank = batched_weights(layers, self.rule(self.active))  # in autocast's dtype where it is on
                for layer in layers:  # a training step follows: a cached eval W would go stale (fused
                    layer._cache = None  # optimizers update parameters without bumping their version)
        return self._bank

    def start_forward(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook of the model root (a DataParallel replica's root, running in a thread
        of its own beside the others, leaves the shared state alone: its layers build their W)."""
        if not getattr(module, "_is_replica", False):
            self._bank, self._in_forward = None, True

    def end_forward(self, module: nn.Module, args: tuple, output) -> None:
        """Forward hook of the model root: the bank's W live on only in the autograd graph."""
        if not getattr(module, "_is_replica", False):
            self._bank, self._in_forward = None, False

    def extra_repr(self) -> str:
        return f"adapters={list(self.configs)}, active={self.active!r}"


def _owner_registrations(state: CompacterState, name: str | None) -> Iterator[tuple[list[str], str | None, nn.ParameterDict | None, str]]:
    """``(owners' parameter names, its holder's key under the state, the holder, the key in it)``
    for every base parameter some adapter trains, as it sits in its owners while adapter ``name``
    is active: the adapter's copy (``"tuned.<name>"``), else the base original (``"base"``), else
    nothing (a BitFit bias the base model lacks: holder None). The names: the key's, then the
    others the base model ties the tensor under (``state.ties``), which all hold the same one."""
    active = state.tuned[name] if name is not None else {}
    for key in {k for tuned in state.tuned.values() for k in tuned}:
        owners = [_unkey(key), *state.ties.get(_unkey(key), ())]
        if key in active:
            yield owners, f"tuned.{name}", active, key
        elif key in state.base:
            yield owners, "base", state.base, key
        else:
            yield owners, None, None, key


def _drop_shared(state: CompacterState, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict`` keeps each twice-registered tensor once, under its owner's key (the key
    ``from_pretrained`` knows): safetensors refuses shared tensors, so ``save_pretrained`` and
    the Trainer's checkpoints failed on an adapted model.

    So its key set depends on the active adapter: the owners' keys hold the active adapter's
    trained copies, whose ``compacter.tuned.<active>.*`` keys are left out, while the inactive
    adapters' copies and the base originals keep their ``compacter.*`` keys. A ``state_dict``
    saved while "b" was active loads into a model with the same adapters and "b" active; with
    "a" active, a strict load reports ``compacter.tuned.b.*`` missing, and ``strict=False``
    leaves b's copies as they were (b's trained values go into a's copies, then a's own overwrite them)."""
    for _, holder_key, _, key in _owner_registrations(state, state.active):
        if holder_key is not None:
            state_dict.pop(f"{prefix}{holder_key}.{key}", None)


def _restore_shared(state: CompacterState, incompatible_keys) -> None:
    """``load_state_dict`` of a ``state_dict`` without those keys: the owners' keys load the same
    Parameter objects, so they are not missing (``load_state_dict(model.state_dict())`` stays
    strict-clean); still missing where the owner's key is missing too. A tensor tied under
    several names is loaded by any of them (``save_pretrained`` keeps one of a tie): the others
    are not missing. A load with ``assign=True`` puts new Parameters into the owners: the state
    takes the first owner's and points the others at it, so there is still one Parameter per
    trained tensor (saving and switching see the loaded values) and the tie holds."""
    missing = incompatible_keys.missing_keys
    modules = dict(state._root[0].named_modules()) if state._root else None
    for owners, holder_key, holder, key in _owner_registrations(state, state.active):
        if holder is None:
            continue
        suffix = f"{STATE_ATTR}.{holder_key}.{key}"
        for full in [m for m in missing if m.endswith(suffix)]:
            if any(full[: len(full) - len(suffix)] + name not in missing for name in owners):
                missing.remove(full)
        for name in owners if len(owners) > 1 else ():
            for full in [m for m in missing if m == name or m.endswith("." + name)]:
                if any(full[: len(full) - len(name)] + other not in missing for other in owners):
                    missing.remove(full)
        if modules is not None:
            owner, attr = _resolve(modules, owners[0])
            if owner._parameters.get(attr) is not None and owner._parameters[attr] is not holder[key]:
                holder[key] = owner._parameters[attr]
            for other in owners[1:]:
                owner, attr = _resolve(modules, other)
                owner._parameters[attr] = holder[key]


@dataclass
class PendingAdapters:
    """Adapters built for a model but not yet attached: every shape is known, nothing is changed."""

    name: str
    config: CompacterConfig
    sites: dict[str, BottleneckAdapter] = field(default_factory=dict)  # target module name -> adapter
    roles: dict[str, str] = field(default_factory=dict)  # target module name -> "attention" | "ffn"
    rule: PHMRule | None = None
    tuned: dict[str, nn.Parameter] = field(default_factory=dict)  # base param name -> trained copy
    ties: dict[str, list[str]] = field(default_factory=dict)  # base param name -> the other names the base ties it under

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's own tensors, keyed as in ``adapter_model.safetensors``."""
        out = {}
        for target, adapter in self.sites.items():
            for pname, p in adapter.named_parameters():
                out[f"adapters.{target}.{pname}"] = p
        if self.rule is not None:
            out["rule.A"] = self.rule.A
        for pname, p in self.tuned.items():
            out[f"tuned.{pname}"] = p
        return out


def check_adapter_name(name: Any) -> None:
    """A ValueError unless ``name`` can name an adapter: a non-empty string without '.' that is not
    an attribute of the module dicts that hold adapters ("items", "update", "role", ...)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"adapter name must be a non-empty string without '.', got {name!r}")
    if any(hasattr(holder, name) for holder in (AdapterSite("ffn", 1), nn.ModuleDict(), nn.ParameterDict())):
        raise ValueError(f"adapter name {name!r} is taken by an attribute of torch's module dicts; choose another name")


def build_adapters(model: nn.Module, config: CompacterConfig, name: str = "default") -> PendingAdapters:
    """Make every module ``config`` asks for on ``model`` without changing the model."""
    if not isinstance(config, CompacterConfig):
        raise TypeError(f"config must be a CompacterConfig, got {type(config).__name__}")
    check_adapter_name(name)
    model = unwrap(model)
    state = get_state(model)
    if state is not None and name in state.configs:
        raise ValueError(f"an adapter named {name!r} is already on this model; choose another name or delete_adapter first")
    if state is not None and (config.train_all or any(c.train_all for c in state.configs.values())):
        raise ValueError("method 'full' trains the base weights in place and cannot share a model with other adapters")
    pending = PendingAdapters(name=name, config=config)
    modules = dict(model.named_modules())
    if config.uses_adapters:
        roles = tuple(role for role, wanted in (("attention", config.after_attention), ("ffn", config.after_ffn)) if wanted)
        placement = placement_for(model, config.attention_modules, config.ffn_modules, roles)
        for role in roles:
            patterns = getattr(placement, role)
            matched = match_modules(model, patterns)
            # the base model's modules only: a pattern such as ".*\.up" also matches the projections
            # of adapters already attached, and an adapter placed inside another one loads into no fresh model
            targets = [t for t in matched if not _is_own_module(t, modules[t])]
            if not targets:
                own = f" (it matches only modules of the adapters already attached: {matched[:3]})" if matched else ""
                raise ValueError(f"no module of {type(model).__name__} matches the {role} patterns {list(patterns)}{own}")
            if config.drop_first_layers:
                targets = _drop_first_layers(model, targets, config.drop_first_layers, role)
            for target in targets:
                if target in pending.sites:
                    raise ValueError(f"module {target} matches both the attention and the ffn patterns")
                d_model = output_features(modules[target], target)
                pending.sites[target] = BottleneckAdapter(config, d_model, name=target)
                pending.roles[target] = role
        if config.adapter_type == "phm" and config.shared_phm_rule:
            pending.rule = PHMRule(config.phm_dim, config.phm_rule_init, config.phm_init_range, config.learn_phm)
        _place_like_model(pending, model, modules)
    pending.tuned, pending.ties = _tuned_copies(model, config, modules)
    return pending


def layer_indices(names: list[str]) -> dict[str, int | None]:
    """The layer each site is in. Names alike but for their numbers form one stack (T5's encoder and
    decoder are two: ``encoder.block.N...`` and ``decoder.block.N...``); a site's layer is the first
    of its numbers that differs between the sites of its stack (``0.encoder.layer.6.attention...``
    in a wrapper: 6, not the wrapper's 0). A stack of one site is layer 0; a name without a number
    has no layer (None)."""
    stacks: dict[tuple[str, ...], list[list[str]]] = {}
    for name in names:
        parts = name.split(".")
        stacks.setdefault(tuple("#" if p.isdigit() else p for p in parts), []).append(parts)
    out: dict[str, int | None] = {}
    for shape, members in stacks.items():
        numbers = [i for i, p in enumerate(shape) if p == "#"]
        varying = next((i for i in numbers if len({m[i] for m in members}) > 1), None)
        for parts in members:
            out[".".join(parts)] = None if not numbers else 0 if varying is None else int(parts[varying])
    return out


def _drop_first_layers(model: nn.Module, targets: list[str], n: int, role: str) -> list[str]:
    """AdapterDrop: the sites of ``targets`` outside each stack's first ``n`` layers."""
    if model_type(model) == "albert":
        raise ValueError("drop_first_layers: ALBERT runs one layer's weights (and adapters) at every depth, so there "
                         "are no first layers to leave without adapters; use drop_first_layers=0 (method 'adapter')")
    layers = layer_indices(targets)
    kept = [t for t in targets if layers[t] is None or layers[t] >= n]
    if not kept:
        raise ValueError(f"drop_first_layers={n} leaves no {role} site of {type(model).__name__}: it has "
                         f"{1 + max(v for v in layers.values() if v is not None)} layer(s) per stack "
                         f"(e.g. {targets[-1]}); lower drop_first_layers")
    return kept


def _place_like_model(pending: PendingAdapters, model: nn.Module, modules: dict[str, nn.Module]) -> None:
    """Move each new adapter to the device and floating dtype of its target module's weight, so a
    model split over devices (``device_map="auto"``, pipeline splits) computes every adapter where
    its layer computes. The shared rule goes with the first adapter; layers elsewhere use a
    differentiable copy of it (:func:`~compacter.phm.rule_like`). A target without parameters
    (or without floating ones) takes the model's first floating parameter's device (dtype)."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    first = None
    for target, adapter in pending.sites.items():
        where = _target_placement(modules, target, ref)
        if where is not None:
            adapter.to(device=where[0], dtype=where[1])
            first = first or where
    if pending.rule is not None and (first or ref is not None):
        device, dtype = first or (ref.device, ref.dtype)
        pending.rule.to(device=device, dtype=dtype)


def _target_placement(modules: dict[str, nn.Module], target: str, ref: torch.Tensor | None) -> tuple | None:
    """``(device, dtype)`` for the adapter of ``target``: its weight's (Linear, GPT-2 Conv1D), else
    its first parameter's; a quantized (integer) weight takes its module's or the model's floating
    dtype. An offloaded weight (on "meta" under an accelerate hook) takes the hook's execution device."""
    module = modules[target]
    weight = getattr(module, "weight", None)
    tensors = ([weight] if isinstance(weight, torch.Tensor) else []) + list(module.parameters())
    if not tensors:
        return (ref.device, ref.dtype) if ref is not None else None
    device = tensors[0].device
    if device.type == "meta":
        device = _execution_device(modules, target) or device
    floating = next((t for t in tensors if t.is_floating_point()), ref)
    return device, (floating.dtype if floating is not None else None)


def _execution_device(modules: dict[str, nn.Module], name: str) -> torch.device | None:
    """The device an accelerate hook on module ``name`` or an ancestor computes on, if any."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        hook = getattr(modules.get(".".join(parts[:i])), "_hf_hook", None)
        for h in (hook, *getattr(hook, "hooks", ())):  # a SequentialHook holds several
            device = getattr(h, "execution_device", None)
            if device is not None:
                return torch.device(device)
    return None


def _is_own_module(mname: str, module: nn.Module) -> bool:
    """Whether module ``mname`` is (inside) one of this library's containers, not the base model's:
    the shared state, an adapter site, or an adapter within one."""
    return (mname == STATE_ATTR or mname.startswith(STATE_ATTR + ".") or isinstance(module, AdapterSite)
            or f".{SITE_ATTR}" in f".{mname}")


def _ties(modules: dict[str, nn.Module]) -> dict[str, list[str]]:
    """Every name of each parameter of ``modules``, keyed by its first one (``named_parameters``'
    name): more than one where the model ties a tensor under several names (BertForMaskedLM's
    ``cls.predictions.bias`` is ``cls.predictions.decoder.bias``)."""
    names: dict[int, list[str]] = {}
    for mname, module in modules.items():
        for pname, p in module._parameters.items():
            if p is not None:
                names.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    return {group[0]: group for group in names.values()}


def _tuned_copies(model: nn.Module, config: CompacterConfig,
                  modules: dict[str, nn.Module]) -> tuple[dict[str, nn.Parameter], dict[str, list[str]]]:
    """Trainable copies of the base parameters the method trains (norms, head, biases), and the
    other names of those the base model ties under several names. A tied tensor gets one copy,
    under its first name, that every name is pointed at (the tie holds: two copies broke it, the
    forward trained one of them, and the other was saved, counted and restored as a dead copy)."""
    if config.train_all:
        return {}, {}
    state = get_state(model)
    wanted: dict[str, torch.Tensor | None] = {}
    modules = {mname: module for mname, module in modules.items() if not _is_own_module(mname, module)}  # the base model's own
    ties = _ties(modules)
    first = {name: group[0] for group in ties.values() for name in group}
    body = body_prefix(model)
    for mname, module in modules.items():
        head = _is_head(mname, config, body)
        norm = config.train_layer_norms and is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if head or norm or (config.train_biases and pname == "bias"):
                wanted.setdefault(first[full], _base_param(state, first[full], p))
        if config.train_biases and config.add_missing_biases and isinstance(module, nn.Linear) and module.bias is None \
                and _LAYER_INDEX.fullmatch(mname):
            wanted[f"{mname}.bias"] = None  # no bias in the base model: a zero one is added
    for mname, module in modules.items():  # heads are trained whole, sub-modules included
        if _is_head(mname, config, body):
            for pname, p in module.named_parameters():
                full = first.get(f"{mname}.{pname}", f"{mname}.{pname}")  # a module shared under two names: its first
                wanted.setdefault(full, _base_param(state, full, p))
    out = {}
    for full, base in wanted.items():
        if base is None:
            module = modules[full.rsplit(".", 1)[0]]
            base = torch.zeros(module.out_features, device=module.weight.device, dtype=module.weight.dtype)
        out[full] = nn.Parameter(base.detach().clone(), requires_grad=True)
    return out, {full: ties[full][1:] for full in out if len(ties.get(full, ())) > 1}


def body_prefix(model: nn.Module) -> str | None:
    """The name of the pretrained body inside a model with a task head ("bert" in
    BertForSequenceClassification), None when the model has no such child (T5, custom models)."""
    prefix = getattr(model, "base_model_prefix", None)
    child = getattr(model, prefix, None) if isinstance(prefix, str) and prefix else None
    return prefix if isinstance(child, nn.Module) and child is not model else None


def _is_head(mname: str, config: CompacterConfig, body: str | None) -> bool:
    """A task-head module: a ``head_modules`` entry with a dot names a module by its whole path
    ("bert.pooler"); one without names a module by its last path component, outside the
    pretrained body, so that DeBERTa's new top-level ``pooler`` is a head and BERT's pretrained
    ``bert.pooler`` is not. ``body``: the body's name, None for a model without one (T5, custom
    models, a bare ``BertModel``: a name matches anywhere, so a bare body's pooler is trained as
    the head its user puts on top of it would be)."""
    if not config.train_head or not mname:
        return False
    if "." in mname and mname in config.head_modules:
        return True
    if mname.split(".")[-1] not in config.head_modules:
        return False
    return body is None or not (mname == body or mname.startswith(body + "."))


def in_head(param_name: str, config: CompacterConfig, body: str | None) -> bool:
    """Whether parameter ``param_name`` lies in a task-head module (:func:`_is_head`), or in a module
    inside one: the part of an adapter made for one model class (BertForSequenceClassification's and
    BertForTokenClassification's ``classifier`` have the same shape and mean different things)."""
    parts = param_name.split(".")[:-1]
    return any(_is_head(".".join(parts[:i]), config, body) for i in range(1, len(parts) + 1))


def _base_param(state: CompacterState | None, full: str, current: torch.Tensor) -> torch.Tensor | None:
    """The base model's own value of a parameter, even while another adapter's copy is active;
    None for a bias the base model does not have (another adapter added it: start from zeros)."""
    if state is not None and _key(full) in state.base:
        return state.base[_key(full)]
    if state is not None and full in state.missing:
        return None
    return current


def attach_adapters(model: nn.Module, pending: PendingAdapters, activate: bool = True) -> nn.Module:
    """Attach built adapters to ``model``, freeze the base, and (by default) activate them; returns ``model``.

    Not activated, they are frozen as every inactive adapter is. Method 'full' is the model's own
    weights, so it cannot be attached inactive (refused before anything changes)."""
    if pending.config.train_all and not activate:
        raise ValueError(FULL_IS_ACTIVE)
    given, model = model, unwrap(model)
    state = get_state(model)
    if state is None:
        state = CompacterState()
        state.base_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        state.train(model.training)
        model.add_module(STATE_ATTR, state)
        state._root.append(model)
        state._checkpointing = [m for m in model.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)]
        state._hooks = [model.register_forward_pre_hook(state.start_forward),
                        model.register_forward_hook(state.end_forward, always_call=True)]
    modules = dict(model.named_modules())
    # new modules take the mode of the module they join (built in training mode, they left an eval
    # model's PHM layers without their eval-mode weight cache until the next model.eval())
    for target, adapter in pending.sites.items():
        site = getattr(modules[target], SITE_ATTR, None)
        if site is None:
            site = AdapterSite(pending.roles[target], adapter.d_model).train(modules[target].training)
            site._state.append(state)
            modules[target].add_module(SITE_ATTR, site)
            site._handle = modules[target].register_forward_hook(_site_hook)
        site[pending.name] = adapter.train(modules[target].training)
    if pending.rule is not None:
        state.rules[pending.name] = pending.rule.train(state.training)
    if pending.config.adapter_type == "phm":
        banked = [proj for adapter in pending.sites.values() for proj in (adapter.down, adapter.up) if isinstance(proj, PHMLinear)]
        for i, layer in enumerate(banked):
            layer._bank_index = i
        state._banked[pending.name] = banked
    tuned = nn.ParameterDict().train(state.training)
    for full, copy in pending.tuned.items():
        owner, attr = _resolve(modules, full)
        if _key(full) not in state.base and full not in state.missing:
            current = owner._parameters.get(attr)
            if current is None:
                state.missing.add(full)
            else:
                state.base[_key(full)] = current
        tuned[_key(full)] = copy
        if attr == "weight" and is_norm(owner) and owner not in state._lean_norms and norms.install(owner):
            state._lean_norms.append(owner)  # keeps no normalized activation for the weight's gradient
    state.tuned[pending.name] = tuned
    state.ties.update(pending.ties)
    state.configs[pending.name] = pending.config
    if pending.config.train_all:
        for p in model.parameters():
            p.requires_grad_(True)
    # sets every adapter's flags: an inactive new adapter is frozen (trainable_parameters, DDP's
    # unused-parameter check and count_parameters agree on what trains)
    set_active_adapter(model, pending.name if activate else state.active)
    return given


def _resolve(modules: dict[str, nn.Module], full: str) -> tuple[nn.Module, str]:
    mname, _, attr = full.rpartition(".")
    return modules[mname], attr


def add_adapters(model: nn.Module, config: CompacterConfig | None = None, name: str = "default") -> nn.Module:
    """Add the adapters of ``config`` (default: Compacter++) to ``model`` as ``name``, freeze the base, activate them.

    Returns the same model object. On any error the model is left unmodified.
    """
    config = config if config is not None else CompacterConfig()
    return attach_adapters(model, build_adapters(model, config, name))


def get_state(model: nn.Module) -> CompacterState | None:
    state = getattr(unwrap(model), STATE_ATTR, None)
    return state if isinstance(state, CompacterState) else None


def _require_state(model: nn.Module) -> CompacterState:
    state = get_state(model)
    if state is None:
        raise ValueError(f"{type(unwrap(model)).__name__} has no adapters: call compacter.add_adapters first")
    return state


def iter_sites(model: nn.Module) -> Iterator[tuple[str, AdapterSite]]:
    for mname, module in unwrap(model).named_modules():
        if isinstance(module, AdapterSite):
            yield mname.rsplit(".", 1)[0], module


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the one in use and the one trained; ``None`` gives the base model back."""
    model = unwrap(model)
    state = _require_state(model)
    if name is not None and name not in state.configs:
        raise ValueError(f"no adapter named {name!r}; this model has: {', '.join(state.configs) or 'none'}")
    if name is None and any(c.train_all for c in state.configs.values()):
        raise ValueError("method 'full' changed the base weights in place: there is no base model to go back to")
    modules = dict(model.named_modules())
    for _, site in iter_sites(model):
        site.active = name if name is not None and name in site else None
        for aname, adapter in site.items():
            adapter.requires_grad_(aname == name)
            if not state.configs[aname].learn_phm:  # per-layer rules (phm-adapter, unshared A) stay frozen
                for module in adapter.modules():
                    if isinstance(module, PHMRule):
                        module.A.requires_grad_(False)
    for rname, rule in state.rules.items():
        rule.A.requires_grad_(rname == name and state.configs[rname].learn_phm)
    for aname, tuned in state.tuned.items():
        for p in tuned.values():
            p.requires_grad_(aname == name)
    _point_owners(state, modules, name)
    state.active = name


def _point_owners(state: CompacterState, modules: dict[str, nn.Module], name: str | None) -> None:
    """Point every base parameter that some adapter trains at adapter ``name``'s copy, or at the
    base model's own (or at nothing: a BitFit bias the base model lacks)."""
    for owners, _, holder, key in _owner_registrations(state, name):
        for full in owners:  # every name of a tied tensor
            owner, attr = _resolve(modules, full)
            owner._parameters[attr] = holder[key] if holder is not None else None


def active_adapter(model: nn.Module) -> str | None:
    state = get_state(model)
    return state.active if state is not None else None


def list_adapters(model: nn.Module) -> list[str]:
    state = get_state(model)
    return list(state.configs) if state is not None else []


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes exactly what the base model computes."""
    previous = active_adapter(model)
    set_active_adapter(model, None)
    try:
        yield model
    finally:
        set_active_adapter(model, previous)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; when none is left, the model is the base model again (hooks removed, flags restored)."""
    model = unwrap(model)
    state = _require_state(model)
    if name not in state.configs:
        raise ValueError(f"no adapter named {name!r}; this model has: {', '.join(state.configs) or 'none'}")
    if state.configs[name].train_all:
        raise ValueError("method 'full' changed the base weights in place and cannot be deleted")
    if state.active == name:
        set_active_adapter(model, None)
    modules = dict(model.named_modules())
    for target, site in list(iter_sites(model)):
        if name in site:
            del site[name]
        if len(site) == 0:
            site._handle.remove()
            delattr(modules[target], SITE_ATTR)
    if name in state.rules:
        del state.rules[name]
    state._banked.pop(name, None)
    del state.tuned[name]
    del state.configs[name]
    _forget_untrained_bases(state)
    if not state.configs:
        for handle in state._hooks:
            handle.remove()
        delattr(model, STATE_ATTR)
        state._root.clear()
        for norm in state._lean_norms:
            norms.uninstall(norm)
        state._lean_norms.clear()
        params = dict(model.named_parameters())
        for full, requires_grad in state.base_requires_grad.items():
            if full in params:
                params[full].requires_grad_(requires_grad)


def _forget_untrained_bases(state: CompacterState) -> None:
    """Drop the base originals (and missing-bias marks) of parameters no remaining adapter trains:
    their owners hold the originals again, and a second registration in ``state.base`` would put
    each such tensor twice into ``state_dict`` (``save_pretrained`` refused shared tensors, and a
    model that never had the deleted adapter refused the extra keys)."""
    trained = {key for tuned in state.tuned.values() for key in tuned}
    for key in [k for k in state.base if k not in trained]:
        del state.base[key]
    state.missing.intersection_update(_unkey(k) for k in trained)
    state.ties = {full: others for full, others in state.ties.items() if _key(full) in trained}


def adapter_modules(model: nn.Module, name: str | None = None) -> PendingAdapters:
    """The attached modules and tensors of adapter ``name`` (default: the active one)."""
    state = _require_state(model)
    name = name if name is not None else state.active
    if name is None:
        raise ValueError(f"no adapter is active (inside disable_adapters, or after set_active_adapter(model, None)): "
                         f"pass name=, one of: {', '.join(state.configs)}")
    if name not in state.configs:
        raise ValueError(f"no adapter named {name!r}; this model has: {', '.join(state.configs) or 'none'}")
    out = PendingAdapters(name=name, config=state.configs[name])
    for target, site in iter_sites(model):
        if name in site:
            out.sites[target] = site[name]
            out.roles[target] = site.role
    out.rule = state.rules[name] if name in state.rules else None
    out.tuned = {_unkey(k): p for k, p in state.tuned[name].items()}
    out.ties = {full: list(state.ties[full]) for full in out.tuned if full in state.ties}
    return out


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of the model as it computes now.

    ``total`` counts the base model plus the active adapter (each tensor once); stored base
    copies and inactive adapters are not counted. ``trainable`` counts tensors with
    ``requires_grad``.
    """
    model = unwrap(model)
    state = get_state(model)
    seen: set[int] = set()
    trainable = total = 0
    for pname, p in model.named_parameters():
        if state is not None and pname.startswith(STATE_ATTR + "."):
            continue
        if state is not None and f".{SITE_ATTR}." in f".{pname}":
            after = pname.split(f"{SITE_ATTR}.", 1)[1]
            if after.split(".", 1)[0] != state.active:
                continue
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    if state is not None and state.active in state.rules:
        rule = state.rules[state.active].A
        total += rule.numel()
        trainable += rule.numel() if rule.requires_grad else 0
    return trainable, total


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should get: those with ``requires_grad``, each once."""
    seen: set[int] = set()
    out = []
    for p in unwrap(model).parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
