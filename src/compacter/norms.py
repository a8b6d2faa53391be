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
keeps its own forward. The lean path runs only in eager reverse mode while the norm's weight
requires grad and grad is enabled; otherwise (frozen, no grad, torch.compile, forward AD,
torch.func transforms, torch.fx tracing) the class's own forward runs.

Known limit: a norm whose forward was already wrapped when the adapters were added (Accelerate's
hooks of ``device_map`` dispatch over several devices or with offload keep the bound forward they
found) keeps running the class's code, with the memory that costs.
"""

from __future__ import annotations

import inspect
import re
import threading
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
    lines = [line for line in lines if line]  # a decorator stays, so a decorated forward is no recipe
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
    cls = type(module)._compacter_base if is_lean(module) else type(module)
    recipe = recipe_of_class(cls)
    weight = getattr(module, "weight", None)
    if recipe is None or not isinstance(weight, torch.Tensor) or weight.dim() != 1 \
            or not isinstance(getattr(module, "variance_epsilon", None), float):
        return None
    return recipe


def _norm_dtype(x_dtype: torch.dtype, w_dtype: torch.dtype, recipe: str) -> torch.dtype:
    """The dtype the class gives the normalized tensor before multiplying by the weight."""
    if recipe == "t5":
        return w_dtype if w_dtype in _HALF else torch.promote_types(x_dtype, torch.float32)
    return x_dtype


def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.to(torch.float32).pow(2).mean(-1, keepdim=True) + eps)


def _normalize(x: torch.Tensor, rstd: torch.Tensor, recipe: str) -> torch.Tensor:
    # as the classes do: T5 multiplies x itself (promoted with the float32 rsqrt), Llama x cast to float32
    return x * rstd if recipe == "t5" else x.to(torch.float32) * rstd


class _RMSNorm(torch.autograd.Function):
    """``(weight * cast(normalized x), rsqrt)``; keeps ``x``, the weight and the rsqrt only.

    Differentiable twice: under ``create_graph`` the backward recomputes the rsqrt from ``x``, so
    second derivatives see it. Eager reverse mode only: under torch.compile, forward AD and
    ``torch.func`` transforms the norm runs its class's code (a Function with a forward-mode rule
    cannot be traced by dynamo, and dynamo's ``func.grad`` reported the input as not needing grad)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, eps: float, recipe: str):
        rstd = _rstd(x, eps)
        n = _normalize(x, rstd, recipe).to(_norm_dtype(x.dtype, weight.dtype, recipe))
        return weight * n, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, eps, recipe = inputs
        rstd = output[1]
        ctx.mark_non_differentiable(rstd)
        ctx.set_materialize_grads(False)  # no zeros made for the rsqrt output's gradient
        ctx.save_for_backward(x, weight, rstd)
        ctx.eps, ctx.recipe = eps, recipe

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, _grad_rstd):
        if grad is None:
            return None, None, None, None
        x, weight, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the rsqrt as a function of x, for second derivatives
            rstd = _rstd(x, ctx.eps)
        n = _normalize(x, rstd, ctx.recipe)  # the normalized input, recomputed
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            # as autograd's mul backward: grad * (n in its forward dtype), summed to the weight's shape
            gw = grad * n.to(_norm_dtype(x.dtype, weight.dtype, ctx.recipe))
            grad_weight = gw.reshape(-1, gw.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            gn = (grad * weight).to(n.dtype)  # d loss / d n
            grad_x = (rstd * (gn - n * (gn * n).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None, None


def _forward_mode_active() -> bool:
    """Forward AD or a torch.func transform is active (eager: the lean path then steps aside)."""
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0 or (functorch is not None and functorch())


# The lean forward is given by a subclass of the norm's class, swapped in as the instance's class:
# an instance attribute `forward` would be copied, still bound to the original, into the shallow
# replicas of nn.DataParallel. The subclass keeps the class's __name__ (reprs, transformers' lists
# of module class names) and gets a __qualname__ that names its base, so that pickle finds it again
# through this module's __getattr__. Its forward knows its base class and recipe by closure: a
# bound forward captured while the norm was lean (Accelerate's hooks, user wrappers) still works
# after the class is given back, and so do subclasses made of it (torch.nn.utils.parametrize).
_PREFIX = "Lean__"
_lean_classes: dict[type, type] = {}
_lock = threading.Lock()


def _lean_forward(base: type, recipe: str):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if ENABLED and not torch.compiler.is_compiling() and isinstance(weight, torch.Tensor) \
                and isinstance(hidden_states, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled() \
                and hidden_states.shape[-1] == weight.shape[0] and not _forward_mode_active():
            return _RMSNorm.apply(hidden_states, weight, self.variance_epsilon, recipe)[0]
        # frozen, no grad, torch.fx tracing (Proxy values), torch.compile (whose partitioner picks
        # what backward keeps), forward AD or torch.func transforms: the class's own code
        return base.forward(self, hidden_states)

    return forward


def _lean_class(base: type) -> type | None:
    with _lock:
        if base not in _lean_classes:
            module, qualname = base.__module__, base.__qualname__
            if "__" in module or "_." in module or "__" in qualname or "." in qualname or module.startswith("_") or qualname.startswith("_"):
                return None  # a name the pickle round trip could not decode
            _lean_classes[base] = type(base.__name__, (base,), {
                "forward": _lean_forward(base, _recipe_cache[base]), "_compacter_base": base, "__module__": __name__,
                "__qualname__": f"{_PREFIX}{module.replace('.', '__')}__{qualname}",
            })
        return _lean_classes[base]


def __getattr__(name: str):
    """Rebuild a lean class by its qualified name (pickle's lookup of ``compacter.norms.Lean__...``)."""
    if name.startswith(_PREFIX):
        import importlib

        module, _, qualname = name[len(_PREFIX):].rpartition("__")
        try:
            base = getattr(importlib.import_module(module.replace("__", ".")), qualname)
        except (ImportError, AttributeError, ValueError):
            base = None
        lean = _lean_class(base) if isinstance(base, type) and recipe_of_class(base) is not None else None
        if lean is not None:
            return lean
        if isinstance(base, type) and issubclass(base, nn.Module):
            return base  # this version's class computes otherwise: the model unpickles with its own code
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
        module.__class__ = type(module)._compacter_base
