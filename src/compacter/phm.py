"""Parameterized hypercomplex multiplication (PHM): the math of Compacter, torch only.

A PHM layer computes ``y = x W + b`` with

    W = Σ_{i=1..n} A_i ⊗ B_i,   A_i ∈ R^{n×n},  B_i ∈ R^{(k/n)×(d/n)},  W ∈ R^{k×d}

and the low-rank variant (LPHM) factorises each fast weight as ``B_i = s_i t_iᵀ`` with
``s_i ∈ R^{(k/n)×r}`` and ``t_i ∈ R^{r×(d/n)}``. The ``A_i`` ("slow" weights, the *rule*) may be
shared by every PHM layer of a model: they then live in one :class:`PHMRule` module that the
caller owns and passes to :meth:`PHMLinear.forward` explicitly. Layers on another device (or in
another dtype) than the shared rule use a differentiable copy of it (:func:`rule_like`).

Shapes used throughout: ``n`` = phm_dim, ``k`` = in_features, ``d`` = out_features,
``p = k / n``, ``q = d / n``, ``r`` = rank.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

#: Fast-weight inits. "glorot-*": standard Glorot (gain 1), as the paper's text says; "glorot-*-released":
#: the released code's (its hypercomplex/inits.py calls xavier_*_ with gain √2), √2 times wider.
PHM_INITS = ("glorot-uniform", "glorot-normal", "glorot-uniform-released", "glorot-normal-released", "normal")
RELEASED_GLOROT_GAIN = math.sqrt(2.0)
RULE_INITS = ("normal", "uniform")


def kronecker_sum(rule: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
    """Return ``Σ_i rule[i] ⊗ fast[i]`` without a Python loop over ``i``.

    rule: [..., n, n, n] (i, a, b); fast: [..., n, p, q] (leading dims batch several layers; a rule
    without them is shared by all). Returns [..., n*p, n*q] with
    ``W[a*p + x, b*q + y] = Σ_i rule[i, a, b] * fast[i, x, y]``.
    One matmul contracts ``i`` (cheaper than an einsum's generic path for these tiny shapes).
    """
    n, p, q = fast.shape[-3:]
    lead = fast.shape[:-3]
    rule_ab_i = rule.movedim(-3, -1).reshape(*rule.shape[:-3], n * n, n)  # [..., (a b), i]
    w = rule_ab_i @ fast.reshape(*lead, n, p * q)  # [..., (a b), (x y)]
    w = w.view(*lead, n, n, p, q).transpose(-3, -2)  # [..., a, x, b, y]
    return w.reshape(*lead, n * p, n * q)  # [..., k, d]


def init_fast_weight(weight: torch.Tensor, method: str, fan_in: int, fan_out: int, std: float = 0.01) -> None:
    """Initialise a fast weight in place: Glorot-uniform (bound ``g·√(6 / (fan_in + fan_out))``),
    Glorot-normal (std ``g·√(2 / (fan_in + fan_out))``), with gain ``g`` = 1, or √2 for the
    "-released" variants (see PHM_INITS); or normal(0, std)."""
    if method not in PHM_INITS:
        raise ValueError(f"unknown fast-weight init {method!r}; allowed: {', '.join(PHM_INITS)}")
    gain = RELEASED_GLOROT_GAIN if method.endswith("-released") else 1.0
    kind = method.removesuffix("-released")
    if kind == "glorot-uniform":
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(weight, -bound, bound)
    elif kind == "glorot-normal":
        nn.init.normal_(weight, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))
    else:  # "normal"
        nn.init.normal_(weight, std=std)


def _read_autocast_available(device_type: str) -> bool:
    try:
        return bool(torch.amp.is_autocast_available(device_type))
    except (RuntimeError, ValueError):  # a device type this build does not know
        return False


# Whether autocast exists for a device type, read once per type: `torch.amp.is_autocast_available`
# calls the builtin `torch._C._is_autocast_available`, which torch.compile could not trace in
# torch 2.11 (the H200 machine's; 2.13, ours, traces it). A graph break there, in every PHM
# layer's forward, made each layer its own compiled frame, and then recompiles per layer exhausted
# dynamo's limit: compiled T5-base steps ran at 3.8x the compiled floor on an H200 with torch 2.11.
# A lookup in this dict traces everywhere.
_AUTOCAST_AVAILABLE: dict[str, bool] = {
    t: _read_autocast_available(t) for t in ("cpu", "cuda", "meta", "mps", "xpu", "hpu", "mtia", "xla")
}


def _autocast_available(device_type: str) -> bool:
    if device_type not in _AUTOCAST_AVAILABLE:  # another backend: read once, outside any compiled step
        _AUTOCAST_AVAILABLE[device_type] = _read_autocast_available(device_type)
    return _AUTOCAST_AVAILABLE[device_type]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's dtype where it is on for ``device_type``; None where off or unsupported ("meta")."""
    if _autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _no_autocast(device_type: str):
    """Autocast off for ``device_type`` (nothing to turn off where it is unsupported)."""
    if _autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def rule_like(rule: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The shared rule on ``like``'s device and in its dtype: ``rule`` itself where they match (no
    copy, no sync), else a differentiable copy (``.to``), so one ``A`` serves layers on several
    devices and its gradient gathers on its own device."""
    if rule.device == like.device and rule.dtype == like.dtype:
        return rule
    return rule.to(device=like.device, dtype=like.dtype)


class PHMRule(nn.Module):
    """The slow weights ``A`` of shape [n, n, n]: one set shared by many PHM layers, or one layer's own."""

    def __init__(self, phm_dim: int, init: str = "normal", init_range: float = 1e-4, learn: bool = True):
        super().__init__()
        if init not in RULE_INITS:
            raise ValueError(f"unknown phm_rule_init {init!r}; allowed: {', '.join(RULE_INITS)}")
        self.phm_dim = phm_dim
        self.A = nn.Parameter(torch.empty(phm_dim, phm_dim, phm_dim), requires_grad=learn)  # [n, n, n]
        if init == "normal":
            nn.init.normal_(self.A, std=init_range)
        else:
            nn.init.uniform_(self.A, -init_range, init_range)

    def forward(self) -> torch.Tensor:
        return self.A

    def extra_repr(self) -> str:
        return f"phm_dim={self.phm_dim}"


_OPTIMIZER_STEPS = [0]  # steps of any torch optimizer in this process: part of PHMLinear's eval-cache key


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class PHMLinear(nn.Module):
    """``y = x W + b`` with ``W = Σ_i A_i ⊗ B_i`` (PHM) and optionally ``B_i = s_i t_iᵀ`` (LPHM).

    With ``own_rule=False`` the layer holds no ``A``: the caller passes the shared rule to
    :meth:`forward`. In eval mode with gradients off, ``W`` is computed once and reused until
    a weight changes: an in-place update (it bumps the tensor's version), a new tensor behind a
    parameter (``p.data = ...``, ``load_state_dict(assign=True)``), any torch optimizer's step
    (fused ones update without bumping versions), ``train()``/``eval()``. The writes it cannot
    see are those that bypass autograd's version counter: in place through ``.data``
    (``p.data.copy_(...)``) or through a view outside torch (``p.detach().numpy()``, a DLPack
    export). Call ``model.eval()`` after one, or write under ``torch.no_grad()`` to the
    parameter itself (or its ``detach()``, which shares the counter).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        phm_dim: int,
        *,
        rank: int = 1,
        factorized: bool = True,
        own_rule: bool = False,
        rule_init: str = "normal",
        rule_init_range: float = 1e-4,
        learn_rule: bool = True,
        init: str = "glorot-uniform",
        bias: bool = True,
        name: str = "PHMLinear",
    ):
        super().__init__()
        n = phm_dim
        if in_features % n or out_features % n:
            divisors = _common_divisors(in_features, out_features)
            raise ValueError(
                f"{name}: PHM needs phm_dim n={n} to divide both dimensions of the weight "
                f"[in={in_features}, out={out_features}]; "
                + (f"choose n among the common divisors {divisors}" if divisors else
                   "no n > 1 divides both: make the dimensions multiples of n (for an adapter: "
                   "a larger bottleneck, i.e. a lower reduction_factor or a larger bottleneck_dim)")
            )
        self.in_features, self.out_features, self.phm_dim = in_features, out_features, n
        self.rank, self.factorized = rank, factorized
        p, q = in_features // n, out_features // n
        if factorized:
            self.s = nn.Parameter(torch.empty(n, p, rank))  # [n, p, r]
            self.t = nn.Parameter(torch.empty(n, rank, q))  # [n, r, q]
            init_fast_weight(self.s, init, fan_in=p, fan_out=rank)
            init_fast_weight(self.t, init, fan_in=rank, fan_out=q)
        else:
            self.B = nn.Parameter(torch.empty(n, p, q))  # [n, p, q]
            init_fast_weight(self.B, init, fan_in=p, fan_out=q)
        self.rule = PHMRule(n, rule_init, rule_init_range, learn_rule) if own_rule else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._cache: tuple[tuple, torch.Tensor, list[torch.Tensor]] | None = None
        self._bank_index: int | None = None  # position in its adapter's weight bank (see batched_weights)

    def fast_weight(self) -> torch.Tensor:
        """The fast weights ``B`` as [n, p, q]."""
        return torch.bmm(self.s, self.t) if self.factorized else self.B  # [n, p, r] @ [n, r, q]

    def weight(self, rule: torch.Tensor | None = None) -> torch.Tensor:
        """The full weight ``W`` [k, d] from the rule (own or given) and the fast weights.

        A given rule on another device or in another dtype than this layer (a model split over
        devices shares one ``A``) is used through a differentiable copy: its gradient reaches it.
        """
        fast = self.fast_weight()
        if self.rule is not None:
            rule = self.rule.A
        elif rule is None:
            raise ValueError("PHMLinear has no rule of its own: pass the shared rule A [n, n, n]")
        else:
            rule = rule_like(rule, fast)
        return kronecker_sum(rule, fast)

    def train(self, mode: bool = True) -> "PHMLinear":
        self._cache = None  # model.train()/.eval() around every evaluation: never carry W across them
        return super().train(mode)

    def _cached_weight(self, rule: torch.Tensor | None) -> torch.Tensor:
        # The eval cache keys on the tensors' versions and storage, and on the count of optimizer
        # steps taken in this process, since some optimizers (fused AdamW) update parameters
        # without bumping versions; train()/eval() and every weight-bank build (a training
        # forward, see CompacterState.weight_bank) drop it too.
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            if self._cache is not None:
                self._cache = None
            return self._build_weight(rule)
        rule_t = self.rule.A if self.rule is not None else rule
        if rule_t is None:
            return self.weight(rule)  # raises the clear "no rule of its own" error
        params = [rule_t] + list(self._fast_params())
        key = (_OPTIMIZER_STEPS[0],) + tuple((id(t), t._version, t.data_ptr(), t.device, t.dtype) for t in params)
        if self._cache is None or self._cache[0] != key:
            # the entry holds the keyed storages, so a `p.data = ...` cannot free one for a new
            # tensor to reuse its address (two such assignments between evaluations gave a stale W)
            self._cache = (key, self._build_weight(rule), [t.detach() for t in params])
        return self._cache[1]

    def _build_weight(self, rule: torch.Tensor | None) -> torch.Tensor:
        # W is built in the parameters' dtype even under autocast: it is tiny, and low-precision
        # bmm of these shapes is both slower on CPU and less accurate. It is cast once in forward.
        with _no_autocast(self._fast_params()[0].device.type):
            return self.weight(rule)

    def _fast_params(self) -> tuple[torch.Tensor, ...]:
        return (self.s, self.t) if self.factorized else (self.B,)

    def forward(self, x: torch.Tensor, rule: torch.Tensor | None = None, bank: list[torch.Tensor] | None = None) -> torch.Tensor:
        # bank: every layer's W, built at once for this forward pass by batched_weights
        w = bank[self._bank_index] if bank is not None and self._bank_index is not None else self._cached_weight(rule)  # [k, d]
        dtype = _autocast_dtype(x.device.type) or x.dtype
        if w.dtype != dtype:
            w = w.to(dtype)
        x2 = x.reshape(-1, self.in_features)  # [N, k]
        if self.bias is None:
            y = x2.to(dtype) @ w
        else:  # bias folded into the matmul: one kernel, one pass over the output
            y = torch.addmm(self.bias.to(dtype), x2.to(dtype), w)  # [N, d]
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = f"factorized rank={self.rank}" if self.factorized else "full B"
        own = "own rule" if self.rule is not None else "shared rule"
        return f"in={self.in_features}, out={self.out_features}, n={self.phm_dim}, {kind}, {own}, bias={self.bias is not None}"


def batched_weights(layers: list[PHMLinear], rule: torch.Tensor | None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``W`` of every layer in ``layers``, in their order; ``rule``: the shared ``A`` of the layers
    that have no rule of their own.

    Layers of one shape, dtype and device are built together: their fast weights (and own rules)
    are stacked and contracted in one batched product, so a step costs a few kernels instead of a
    few per layer (T5-base Compacter: 96 PHM layers, 2 shapes). Each ``W`` is built on its layer's
    device; a group on another device or dtype than ``rule`` uses a differentiable copy of it (see
    :func:`rule_like`), so a model split over devices shares one ``A``. ``dtype``: the dtype of
    the returned W, cast once per group instead of once per layer; default: autocast's dtype where
    autocast is on for the group's device, else the layers' own.
    """
    groups: dict[tuple, list[int]] = {}
    for i, layer in enumerate(layers):
        ref = layer._fast_params()[0]
        key = (layer.factorized, layer.rule is not None, layer.in_features, layer.out_features, layer.rank, ref.dtype, ref.device)
        groups.setdefault(key, []).append(i)
    out: list[torch.Tensor] = [None] * len(layers)  # type: ignore[list-item]  # every slot is filled below
    for (factorized, own_rule, *_, device), members in groups.items():
        group = [layers[i] for i in members]
        group_dtype = dtype if dtype is not None else _autocast_dtype(device.type)
        with _no_autocast(device.type):
            if factorized:  # B = s t: [L, n, p, r] @ [L, n, r, q]
                fast = torch.matmul(torch.stack([m.s for m in group]), torch.stack([m.t for m in group]))
            else:
                fast = torch.stack([m.B for m in group])  # [L, n, p, q]
            if own_rule:
                rules = torch.stack([m.rule.A for m in group])  # [L, n, n, n]
            elif rule is None:
                raise ValueError("batched_weights: these PHM layers share a rule; pass it")
            else:
                rules = rule_like(rule, fast)
            w = kronecker_sum(rules, fast)  # [L, k, d]
            if group_dtype is not None and w.dtype != group_dtype:
                w = w.to(group_dtype)
        for i, wi in zip(members, w.unbind(0)):
            out[i] = wi
    return out


class LowRankLinear(nn.Module):
    """``y = x (u vᵀ) + b``: the Adapter-LowRank projection, ``u`` [k, r], ``v`` [r, d]."""

    def __init__(self, in_features: int, out_features: int, rank: int = 1, init: str = "glorot-uniform", bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.u = nn.Parameter(torch.empty(in_features, rank))  # [k, r]
        self.v = nn.Parameter(torch.empty(rank, out_features))  # [r, d]
        init_fast_weight(self.u, init, fan_in=in_features, fan_out=rank)
        init_fast_weight(self.v, init, fan_in=rank, fan_out=out_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor, rule: torch.Tensor | None = None, bank: list[torch.Tensor] | None = None) -> torch.Tensor:
        y = (x @ self.u.to(x.dtype)) @ self.v.to(x.dtype)  # [..., k] -> [..., r] -> [..., d]
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class PlainLinear(nn.Linear):
    """A dense adapter projection (Houlsby / Pfeiffer), weights normal(0, std), bias zero."""

    def __init__(self, in_features: int, out_features: int, std: float = 0.01, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        nn.init.normal_(self.weight, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, rule: torch.Tensor | None = None, bank: list[torch.Tensor] | None = None) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _common_divisors(a: int, b: int) -> list[int]:
    g = math.gcd(a, b)
    return [i for i in range(2, min(g, 64) + 1) if g % i == 0]
