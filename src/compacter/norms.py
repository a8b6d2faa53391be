"""Trained RMS norms that keep no normalized activation for backward.

Compacter trains the layer norms. In T5 and in the Llama family an RMS norm is plain PyTorch code,
``weight * (x * rsqrt(mean(x^2) + eps))``, and once its weight requires grad autograd keeps the
normalized tensor (float32, as large as the hidden states) of every norm for the weight's
gradient. On an H200 that made compacter++'s T5-base training step take 1.13x the memory of the
frozen model (6.91 GiB against 6.10; 5.90 without trained norms, docs/BENCHMARKS.md). Here the
norm's forward is one autograd function that keeps only its input (which the model keeps anyway)
and the per-row ``rsqrt`` and recomputes the normalized tensor in backward.

It is used only for norm classes whose ``forward`` is, line for line, one of the two recipes that
transformers' RMS norms share (:data:`RECIPES`: T5's, about ten classes; Llama's, about 140), read
from the class's source, so what runs is the computation the class itself defines; any other norm
keeps its own forward. The lean path runs only while the norm's weight requires grad and grad is
enabled; otherwise the class's own forward runs.
"""

from __future__ import annotations

import inspect
import re
import types

import torch
from torch import nn

__all__ = ["ENABLED", "RECIPES", "install", "is_lean", "recipe_of", "recipe_of_class", "uninstall"]

# Benchmarks turn this off to measure autograd's own norms in the same process.
ENABLED = True

_HALF = (torch.float16, torch.bfloat16)

RECIPES = {
    # T5LayerNorm, MT5, UMT5, LongT5, SwitchTransformers, Pix2Struct, Udop, Pop2Piano, ...
    "t5": """def forward(self, hidden_states):
variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
if self.weight.dtype in [torch.float16, torch.bfloat16]:
hidden_states = hidden_states.to(self.weight.dtype)
return self.weight * hidden_states""",
    # LlamaRMSNorm, Mistral, Qwen2/3, Phi-3, OLMo, Granite, ... (and their -> torch.Tensor annotation)
    "llama": """def forward(self, hidden_states):
input_dtype = hidden_states.dtype
hidden_states = hidden_states.to(torch.float32)
variance = hidden_states.pow(2).mean(-1, keepdim=True)
hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
return self.weight * hidden_states.to(input_dtype)""",
}

_recipe_cache: dict[type, str | None] = {}


def _normalized_source(fn) -> str | None:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    src = re.sub(r'""".*?"""', "", src, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for line in src.splitlines()]
    lines = [line for line in lines if line and not line.startswith("@")]
    if lines:  # annotations do not change the computation
        lines[0] = re.sub(r"\s*->\s*[\w.\[\], ]+:$", ":", lines[0]).replace("hidden_states: torch.Tensor", "hidden_states")
    return "\n".join(lines)


def recipe_of_class(cls: type) -> str | None:
    """The name of the recipe that ``cls.forward`` is (see :data:`RECIPES`), else None."""
    if cls not in _recipe_cache:
        fwd = cls.__dict__.get("forward")
        src = _normalized_source(fwd) if isinstance(fwd, types.FunctionType) else None
        _recipe_cache[cls] = next((name for name, recipe in RECIPES.items() if src == recipe), None)
    return _recipe_cache[cls]


def recipe_of(module: nn.Module) -> str | None:
    """The recipe of ``module``'s own class forward, where it has the attributes the recipe reads."""
    cls = type(module).__bases__[0] if is_lean(module) else type(module)
    recipe = recipe_of_class(cls)
    weight = getattr(module, "weight", None)
    if recipe is None or not isinstance(weight, torch.Tensor) or weight.dim() != 1 \
            or not isinstance(getattr(module, "variance_epsilon", None), float):
        return None
    return recipe


class _RMSNorm(torch.autograd.Function):
    """``weight * cast(x * rsqrt(mean(x^2) + eps))``, saving ``x`` and the rsqrt only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, recipe: str) -> torch.Tensor:
        xf = x.to(torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        n = x * rstd  # the class's own promotion: float32 for half x and float32 rstd
        if recipe == "t5":
            if weight.dtype in _HALF:
                n = n.to(weight.dtype)
        else:
            n = n.to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        ctx.n_dtype = n.dtype
        return weight * n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xf = x.to(torch.float32)
        n = xf * rstd  # the normalized input, recomputed
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # as autograd's mul backward: grad * (n in its forward dtype), summed to the weight's shape
            gw = grad * n.to(ctx.n_dtype)
            grad_weight = gw.reshape(-1, gw.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gn = (grad * weight).to(torch.float32)  # d loss / d n
            grad_x = (rstd * (gn - n * (gn * n).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None, None


def _lean_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if ENABLED and weight.requires_grad and torch.is_grad_enabled() and hidden_states.shape[-1] == weight.shape[0]:
        return _RMSNorm.apply(hidden_states, weight, self.variance_epsilon, self._compacter_recipe)
    return super(type(self), self).forward(hidden_states)


# The lean forward is given by a subclass of the norm's class, swapped in as the instance's class:
# an instance attribute `forward` would be copied, still bound to the original, into the shallow
# replicas of nn.DataParallel. The subclass keeps the class's __name__ (reprs, transformers' lists
# of module class names) and gets a __qualname__ that names its base, so that pickle finds it again
# through this module's __getattr__.
_PREFIX = "Lean__"
_lean_classes: dict[type, type] = {}


def _lean_class(base: type) -> type | None:
    if base not in _lean_classes:
        module, qualname = base.__module__, base.__qualname__
        if "__" in module or "_." in module or "__" in qualname or "." in qualname or module.startswith("_") or qualname.startswith("_"):
            return None  # a name the pickle round trip could not decode
        cls = type(base.__name__, (base,), {
            "forward": _lean_forward, "_compacter_recipe": _recipe_cache[base], "__module__": __name__,
            "__qualname__": f"{_PREFIX}{module.replace('.', '__')}__{qualname}",
        })
        _lean_classes[base] = cls
    return _lean_classes[base]


def __getattr__(name: str):
    """Rebuild a lean class by its qualified name (pickle's lookup of ``compacter.norms.Lean__...``)."""
    if name.startswith(_PREFIX):
        import importlib

        module, _, qualname = name[len(_PREFIX):].rpartition("__")
        base = getattr(importlib.import_module(module.replace("__", ".")), qualname)
        if recipe_of_class(base) is not None and _lean_class(base) is not None:
            return _lean_classes[base]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_lean(module: nn.Module) -> bool:
    return type(module) in _lean_classes.values()


def install(module: nn.Module) -> bool:
    """Give a recognised RMS norm the lean forward; False (nothing changed) for any other module."""
    if is_lean(module):
        return True
    if recipe_of(module) is None:
        return False
    cls = _lean_class(type(module))
    if cls is None:
        return False
    module.__class__ = cls
    return True


def uninstall(module: nn.Module) -> None:
    """Give the module its own class back."""
    if is_lean(module):
        module.__class__ = type(module).__bases__[0]
