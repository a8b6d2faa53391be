"""The bottleneck adapter, ``A(x) = up(act(down(x))) + x``, with PHM, low-rank or dense projections.

Compacter, Compacter++ and PHM-Adapter use :class:`~compacter.phm.PHMLinear` projections,
Adapter-LowRank uses :class:`~compacter.phm.LowRankLinear`, Houlsby and Pfeiffer adapters use
dense ones. The adapter takes the shared PHM rule (if any) as an explicit argument.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CompacterConfig
from .phm import LowRankLinear, PHMLinear, PlainLinear, _common_divisors

_ACTIVATIONS = {
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def make_projection(config: CompacterConfig, in_features: int, out_features: int, name: str) -> nn.Module:
    """One adapter projection ``[..., in] -> [..., out]`` of the kind ``config.adapter_type`` names."""
    if config.adapter_type == "phm":
        return PHMLinear(
            in_features, out_features, config.phm_dim,
            rank=config.phm_rank, factorized=config.factorized_phm, own_rule=not config.shared_phm_rule,
            rule_init=config.phm_rule_init, rule_init_range=config.phm_init_range, learn_rule=config.learn_phm,
            init=config.phm_init, bias=config.adapter_bias, name=name,
        )
    if config.adapter_type == "lowrank":
        return LowRankLinear(in_features, out_features, config.lowrank_rank, init=config.phm_init, bias=config.adapter_bias)
    if config.adapter_type == "linear":
        return PlainLinear(in_features, out_features, std=config.adapter_init_std, bias=config.adapter_bias)
    raise ValueError(f"adapter_type={config.adapter_type!r} builds no projection")


def _check_phm_bottleneck(config: CompacterConfig, d_model: int, k: int, name: str) -> None:
    """PHM projections need phm_dim n to divide the model width and the bottleneck: a ValueError
    that says which setting to change (the layer's own message can only list divisors, and none
    exists when the bottleneck comes out as 1, e.g. reduction_factor=200 on a 384-wide model)."""
    n = config.phm_dim
    if d_model % n == 0 and k % n == 0:
        return
    both = _common_divisors(d_model, k)
    other_n = f"choose phm_dim among {both}" if both else f"no phm_dim > 1 divides both {d_model} and {k}"
    needs = (f"{name}: PHM needs phm_dim n={n} to divide both dimensions of the adapter's down projection "
             f"[in={d_model}, out={k}] (and of its up projection)")
    made = (f"bottleneck_dim is {k}" if config.bottleneck_dim is not None
            else f"the bottleneck is {d_model} // reduction_factor {config.reduction_factor} = {k}")
    if d_model % n and both:
        raise ValueError(f"{needs}; {other_n}")
    if d_model % n:  # no phm_dim fits this bottleneck: it must grow before phm_dim can be chosen
        grow = "set a larger bottleneck_dim" if config.bottleneck_dim is not None else "lower reduction_factor or set bottleneck_dim"
        raise ValueError(f"{needs}; {other_n} ({made}): {grow}, and choose phm_dim among the divisors of {d_model} "
                         f"{_common_divisors(d_model, d_model)} that divide the new bottleneck too")
    fix = f"set bottleneck_dim to a multiple of {n}"
    if config.bottleneck_dim is None:
        factor = next((f for f in range(min(config.reduction_factor, d_model // n), 0, -1) if (d_model // f) % n == 0), None)
        if factor is not None:
            fix = f"lower reduction_factor (e.g. reduction_factor={factor}: bottleneck {d_model // factor}) or " + fix
    raise ValueError(f"{needs}, but {made}: {fix}"
                     + (f"; or {other_n}" if both else f" ({other_n})"))


class BottleneckAdapter(nn.Module):
    """``A(x) = up(act(down(x))) + x`` with ``x`` [..., d_model] and a bottleneck of ``k`` units."""

    def __init__(self, config: CompacterConfig, d_model: int, name: str = "adapter"):
        super().__init__()
        k = config.bottleneck(d_model)
        if config.adapter_type == "phm":
            _check_phm_bottleneck(config, d_model, k, name)
        self.d_model, self.bottleneck = d_model, k
        self.down = make_projection(config, d_model, k, f"{name}.down")  # [..., d] -> [..., k]
        self.act = _ACTIVATIONS[config.non_linearity]()
        self.up = make_projection(config, k, d_model, f"{name}.up")  # [..., k] -> [..., d]

    def forward(self, x: torch.Tensor, rule: torch.Tensor | None = None, bank: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.up(self.act(self.down(x, rule, bank)), rule, bank) + x
