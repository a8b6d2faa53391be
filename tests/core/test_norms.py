"""Trained RMS norms run one autograd function that keeps no normalized activation (compacter.norms):
the same outputs and gradients as the norm class's own forward, less saved for backward, only for
classes whose forward is one of the two known recipes, and removed with the last adapter."""

import copy

import pytest
import torch
import transformers as T
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

import compacter
from compacter import norms

from .tiny import tiny

ALL = ("t5", "llama")


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _norm(cls, dtype):
    torch.manual_seed(0)
    norm = cls(16, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm


@pytest.mark.parametrize("cls,recipe", [(T5LayerNorm, "t5"), (LlamaRMSNorm, "llama")])
@pytest.mark.parametrize("x_dtype,w_dtype,autocast", [
    (torch.float32, torch.float32, False),
    (torch.float64, torch.float32, False),
    (torch.bfloat16, torch.float32, False),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.float32, torch.float32, True),
])
def test_same_output_and_gradients_as_the_class_forward(cls, recipe, x_dtype, w_dtype, autocast):
    ref = _norm(cls, w_dtype)
    lean = copy.deepcopy(ref)
    assert norms.install(lean) and norms.recipe_of(lean) == recipe
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)).to(x_dtype)
    g = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    results = []
    for norm in (ref, lean):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = norm(xi)
        (y.float() * g).sum().backward()
        results.append((y, xi.grad, norm.weight.grad))
    (y0, gx0, gw0), (y1, gx1, gw1) = results
    assert y1.dtype == y0.dtype and gx1.dtype == gx0.dtype and gw1.dtype == gw0.dtype
    tol = dict(rtol=2e-2, atol=2e-2) if torch.bfloat16 in (x_dtype, w_dtype) else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)  # the forward is the class's computation, op for op
    torch.testing.assert_close(gx1, gx0, **tol)
    torch.testing.assert_close(gw1, gw0, **tol)


@pytest.mark.parametrize("cls", [T5LayerNorm, LlamaRMSNorm])
def test_keeps_no_normalized_activation(cls):
    ref = _norm(cls, torch.float32)
    lean = copy.deepcopy(ref)
    norms.install(lean)
    x = torch.randn(4, 32, 16, requires_grad=True)
    before, after = _saved_bytes(lambda: ref(x)), _saved_bytes(lambda: lean(x))
    activation = x.numel() * 4
    assert before >= after + activation  # the normalized float32 tensor is no longer kept
    assert after <= activation + 4 * 32 * 4 + 16 * 4  # x, the per-row rsqrt and the weight


def test_frozen_or_no_grad_runs_the_class_forward(monkeypatch):
    norm = _norm(T5LayerNorm, torch.float32)
    norms.install(norm)
    calls = []
    monkeypatch.setattr(norms._RMSNorm, "apply", lambda *a: calls.append(1) or (T5LayerNorm.forward(norm, a[0]), None))
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        norm(x)
    norm.weight.requires_grad_(False)
    norm(x)
    assert calls == []
    norm.weight.requires_grad_(True)
    norm(x)
    assert calls == [1]


def test_only_the_known_recipes_are_given_the_lean_forward():
    class Shifted(T5LayerNorm):  # same attributes, another computation
        def forward(self, hidden_states):
            return super().forward(hidden_states) + 1

    gemma = T.models.gemma.modeling_gemma.GemmaRMSNorm(16)
    for module in (nn.LayerNorm(16), Shifted(16), gemma, nn.RMSNorm(16)):
        assert norms.recipe_of(module) is None and not norms.install(module)
        assert not norms.is_lean(module)


@pytest.mark.parametrize("arch", ALL)
def test_adapted_model_trains_as_with_autograd_norms(arch, monkeypatch):
    """The whole model: compacter++ (trained norms) gives the same loss and gradients with the
    lean norms as with the classes' own forwards, and the last deletion gives the forwards back."""
    model, batch = tiny(arch)
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    lean = [m for m in model.modules() if norms.is_lean(m)]
    assert lean and all(norms.recipe_of(m) for m in lean)
    grads = []
    for enabled in (True, False):
        monkeypatch.setattr(norms, "ENABLED", enabled)
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l0, l1, rtol=0, atol=0)
    assert g0.keys() == g1.keys() and any("norm" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-5, atol=1e-6, msg=n)
    compacter.delete_adapter(model, "default")
    assert not [m for m in model.modules() if norms.is_lean(m)]


def test_saved_for_backward_shrinks_in_a_t5_training_step(monkeypatch):
    model, batch = tiny("t5")
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    sizes = {}
    for enabled in (False, True):
        monkeypatch.setattr(norms, "ENABLED", enabled)
        sizes[enabled] = _saved_bytes(lambda: model(**batch).loss)
    assert sizes[True] < sizes[False]


def test_lean_norms_keep_their_name_and_survive_pickle_and_deepcopy():
    import pickle

    model, batch = tiny("t5")
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    norm = model.encoder.final_layer_norm
    assert norms.is_lean(norm) and isinstance(norm, T5LayerNorm) and type(norm).__name__ == "T5LayerNorm"
    assert "T5LayerNorm(" in repr(model)
    loss = model(**batch).loss
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert norms.is_lean(other.encoder.final_layer_norm)
        torch.testing.assert_close(other(**batch).loss, loss, rtol=0, atol=0)


def test_a_pickled_model_loads_in_a_fresh_process(tmp_path):
    import pickle
    import subprocess
    import sys

    model, batch = tiny("llama")
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    code = ("import pickle, sys; from compacter import norms; m = pickle.load(open(sys.argv[1], 'rb')); "
            "print(sum(norms.is_lean(x) for x in m.modules()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pkl")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(norms.is_lean(x) for x in model.modules()) > 0


def _pair(cls=LlamaRMSNorm, dtype=torch.float64):
    ref = _norm(cls, dtype)
    lean = copy.deepcopy(ref)
    assert norms.install(lean)
    return ref, lean


@pytest.mark.parametrize("cls", [T5LayerNorm, LlamaRMSNorm])
def test_second_derivatives_equal_the_class_ones(cls):
    """Gradient penalties and Hessian-vector products differentiate the backward: the rsqrt it
    uses must be a function of x there, not a saved constant."""
    ref, lean = _pair(cls)
    x = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = []
    for norm in (ref, lean):
        xi = x.clone().requires_grad_(True)
        gx, gw = torch.autograd.grad((norm(xi) ** 3).sum(), (xi, norm.weight), create_graph=True)
        out.append(torch.autograd.grad((gx ** 2).sum() + (gw ** 2).sum(), (xi, norm.weight)))
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)  # the rsqrt is float32 in both


def test_torch_func_and_forward_mode_give_the_class_results():
    ref, lean = _pair()
    x = torch.randn(4, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.randn_like(x)

    def per_sample_grads(norm):
        params = {"weight": norm.weight}
        loss = lambda p, xi: (torch.func.functional_call(norm, p, (xi,)) ** 2).sum()  # noqa: E731
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)["weight"]

    torch.testing.assert_close(per_sample_grads(lean), per_sample_grads(ref))
    torch.testing.assert_close(torch.func.jvp(lean, (x,), (t,))[1], torch.func.jvp(ref, (x,), (t,))[1])
    import torch.autograd.forward_ad as fwAD

    tangents = []
    for norm in (ref, lean):
        with fwAD.dual_level():
            tangents.append(fwAD.unpack_dual(norm(fwAD.make_dual(x, t))).tangent)
    torch.testing.assert_close(tangents[1], tangents[0])


def test_fx_traces_a_lean_norm_as_its_class():
    ref, lean = _pair()
    graph = torch.fx.symbolic_trace(lean)
    x = torch.randn(2, 16, dtype=torch.float64)
    torch.testing.assert_close(graph(x), ref(x))


def test_a_forward_captured_while_lean_works_after_the_class_is_given_back():
    """Accelerate's hooks and user wrappers keep the bound forward they found."""
    ref, lean = _pair()
    captured = lean.forward
    norms.uninstall(lean)
    assert type(lean) is LlamaRMSNorm
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(captured(x), ref(x))
    with torch.no_grad():
        torch.testing.assert_close(captured(x), ref(x))


def test_a_subclass_of_a_lean_norm_runs_without_recursion():
    """torch.nn.utils.parametrize makes a subclass of the module's class."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    ref, lean = _pair()
    parametrize.register_parametrization(lean, "weight", Double())
    x = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = ref.weight * 2 * LlamaRMSNorm.forward(_pair()[0].requires_grad_(False), x) / ref.weight
        torch.testing.assert_close(lean(x), expected)
    torch.testing.assert_close(lean(x), expected)


def test_unknown_lean_names_are_attribute_errors():
    assert not hasattr(norms, "Lean__no_such_module__X")
    assert not hasattr(norms, "Lean__os__system")
    assert not hasattr(norms, "something_else")


def test_forward_over_reverse_without_create_graph():
    """A Hessian-vector product by forward AD over the backward: the forward ran under a dual
    level, so the norm runs its class's code and the tangent of the gradient is right."""
    import torch.autograd.forward_ad as fwAD

    results = []
    for norm in _pair():
        x = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        v = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
        with fwAD.dual_level():
            xd = fwAD.make_dual(x.clone().requires_grad_(True), v)
            (g,) = torch.autograd.grad((norm(xd) ** 3).sum(), xd)
            results.append(fwAD.unpack_dual(g).tangent)
    torch.testing.assert_close(results[1], results[0])


def test_compiled_torch_func_gives_the_class_gradients():
    """dynamo's func.grad reported the lean Function's input as not needing grad (a zero gradient);
    compiled, the norm runs its class's code."""
    ref, lean = _pair()
    z = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    expected = torch.func.grad(lambda t: (ref(t) ** 2).sum())(z)
    torch._dynamo.reset()
    try:
        got = torch.compile(torch.func.grad(lambda t: (lean(t) ** 2).sum()), backend="eager", fullgraph=True)(z)
        jvp = torch.func.jvp(torch.compile(lean, backend="eager"), (z,), (torch.ones_like(z),))[1]
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(jvp, torch.func.jvp(ref, (z,), (torch.ones_like(z),))[1])


def test_a_pickle_loads_where_the_class_no_longer_is_the_recipe(monkeypatch):
    """Another transformers release whose norm computes otherwise: the model unpickles with the
    plain class (its own code) instead of failing."""
    import pickle

    model, batch = tiny("t5")
    compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=4))
    data = pickle.dumps(model)
    monkeypatch.setattr(norms, "_lean_classes", {})
    monkeypatch.setattr(norms, "_recipe_cache", {T5LayerNorm: None})
    other = pickle.loads(data)
    assert type(other.encoder.final_layer_norm) is T5LayerNorm
    torch.testing.assert_close(other(**batch).loss, model(**batch).loss, rtol=0, atol=0)
