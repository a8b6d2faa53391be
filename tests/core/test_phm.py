"""The PHM math: Kronecker sums, PHM/LPHM layers, their initialisations and the inference cache."""

import math

import pytest
import torch

from compacter.phm import LowRankLinear, PHMLinear, PHMRule, init_fast_weight, kronecker_sum


def _loop_kron(A, B):
    return sum(torch.kron(A[i], B[i]) for i in range(A.shape[0]))


@pytest.mark.parametrize("n", [2, 4, 8, 12])
@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("pq", [(1, 1), (3, 5), (7, 2), (16, 4)])
def test_kronecker_sum_matches_torch_kron_float64(n, rank, pq):
    p, q = pq
    g = torch.Generator().manual_seed(n * 100 + rank * 10 + p)
    A = torch.randn(n, n, n, dtype=torch.float64, generator=g)
    s = torch.randn(n, p, rank, dtype=torch.float64, generator=g)
    t = torch.randn(n, rank, q, dtype=torch.float64, generator=g)
    B = s @ t  # [n, p, q]
    expected = _loop_kron(A, B)
    got = kronecker_sum(A, B)
    assert got.shape == (n * p, n * q)
    rel = (got - expected).norm() / expected.norm()
    assert rel < 1e-12


def test_kronecker_sum_batches_layers():
    A = torch.randn(4, 4, 4, dtype=torch.float64)
    B = torch.randn(3, 4, 2, 5, dtype=torch.float64)  # three layers' fast weights
    got = kronecker_sum(A, B)
    assert got.shape == (3, 8, 20)
    for layer in range(3):
        torch.testing.assert_close(got[layer], _loop_kron(A, B[layer]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("factorized", [True, False])
@pytest.mark.parametrize("own_rule", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_phm_linear_forward_is_x_w_plus_b(factorized, own_rule, bias):
    layer = PHMLinear(12, 8, 4, rank=2, factorized=factorized, own_rule=own_rule, bias=bias).double()
    rule = None if own_rule else torch.randn(4, 4, 4, dtype=torch.float64)
    A = layer.rule.A if own_rule else rule
    B = layer.s @ layer.t if factorized else layer.B
    W = _loop_kron(A, B)
    assert W.shape == (12, 8)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    y = layer(x, rule)
    expected = x @ W + (layer.bias if bias else 0)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert (layer.bias is None) == (not bias)


def test_phm_linear_parameter_count_matches_paper_formula():
    k, d, n = 768, 24, 4
    lphm = PHMLinear(k, d, n, rank=1, factorized=True, own_rule=False, bias=False)
    assert sum(p.numel() for p in lphm.parameters()) == k + d  # n (k/n + d/n)
    phm = PHMLinear(k, d, 12, factorized=False, own_rule=True, bias=False)
    assert sum(p.numel() for p in phm.parameters()) == k * d // 12 + 12 ** 3


def test_shared_rule_is_required_without_own_rule():
    layer = PHMLinear(8, 8, 2)
    with pytest.raises(ValueError, match="shared rule"):
        layer(torch.randn(1, 8))


@pytest.mark.parametrize("shape", [(10, 8), (8, 10), (9, 12)])
def test_indivisible_dimension_names_module_shape_and_n(shape):
    with pytest.raises(ValueError) as err:
        PHMLinear(*shape, 4, name="encoder.block.0.adapter.down")
    msg = str(err.value)
    assert "encoder.block.0.adapter.down" in msg and f"in={shape[0]}" in msg and f"out={shape[1]}" in msg and "n=4" in msg



def test_no_common_divisor_points_at_the_bottleneck_not_an_empty_list():
    with pytest.raises(ValueError) as err:
        PHMLinear(384, 1, 4, name="down")
    msg = str(err.value)
    assert "divisors []" not in msg and "no n > 1 divides both" in msg and "reduction_factor" in msg


@pytest.mark.parametrize("overrides,expected", [
    ({"reduction_factor": 200}, ["384 // reduction_factor 200 = 1", "reduction_factor=96: bottleneck 4",
                                 "bottleneck_dim to a multiple of 4", "no phm_dim > 1 divides both 384 and 1"]),
    ({"reduction_factor": 50}, ["= 7", "reduction_factor=48: bottleneck 8"]),
    ({"bottleneck_dim": 6}, ["bottleneck_dim is 6", "multiple of 4", "choose phm_dim among [2, 3, 6]"]),
])
def test_adapter_bottleneck_that_phm_dim_cannot_divide_says_what_to_change(overrides, expected):
    """A bottleneck of 1 (reduction_factor=200 on a 384-wide model) used to end in
    'choose n among the common divisors []'."""
    from compacter import CompacterConfig
    from compacter.adapters import BottleneckAdapter

    with pytest.raises(ValueError) as err:
        BottleneckAdapter(CompacterConfig("compacter++", **overrides), 384, name="encoder.layer.0.output")
    msg = str(err.value)
    assert msg.startswith("encoder.layer.0.output: ") and "divisors []" not in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_add_adapters_with_a_bottleneck_of_one_names_reduction_factor():
    import transformers as T

    import compacter

    model = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=96))
    with pytest.raises(ValueError, match="32 // reduction_factor 64 = 1") as err:
        compacter.add_adapters(model, compacter.CompacterConfig("compacter++", reduction_factor=64))
    assert "reduction_factor=8: bottleneck 4" in str(err.value)

@pytest.mark.parametrize("method,check", [
    ("glorot-uniform", lambda w, fi, fo: w.abs().max() <= math.sqrt(6 / (fi + fo)) and w.std() > 0.5 * math.sqrt(2 / (fi + fo))),
    ("glorot-normal", lambda w, fi, fo: abs(w.std() - math.sqrt(2 / (fi + fo))) < 0.1 * math.sqrt(2 / (fi + fo))),
    ("normal", lambda w, fi, fo: abs(w.std() - 0.01) < 0.001),
    # the released code's (hypercomplex/inits.py: xavier_*_ with gain √2): √2 times the standard bound / std
    ("glorot-uniform-released", lambda w, fi, fo: math.sqrt(6 / (fi + fo)) < w.abs().max() <= math.sqrt(2) * math.sqrt(6 / (fi + fo))),
    ("glorot-normal-released", lambda w, fi, fo: abs(w.std() - math.sqrt(2) * math.sqrt(2 / (fi + fo))) < 0.1 * math.sqrt(2 / (fi + fo))),
])
def test_fast_weight_inits(method, check):
    torch.manual_seed(0)
    w = torch.empty(200, 300)
    init_fast_weight(w, method, fan_in=200, fan_out=300)
    assert check(w, 200, 300)


@pytest.mark.parametrize("kind", ["glorot-uniform", "glorot-normal"])
@pytest.mark.parametrize("build", [
    lambda init: PHMLinear(48, 12, 4, init=init),  # s, t
    lambda init: PHMLinear(48, 12, 4, factorized=False, init=init),  # B
    lambda init: LowRankLinear(48, 12, rank=2, init=init),  # u, v
])
def test_every_fast_weight_layer_takes_the_released_inits(build, kind):
    """The same draws as the standard init, times √2, in every layer whose weights init_fast_weight fills."""
    torch.manual_seed(0)
    standard = build(kind)
    torch.manual_seed(0)
    released = build(kind + "-released")
    pairs = [(n, p, dict(released.named_parameters())[n]) for n, p in standard.named_parameters() if n != "bias"]
    assert pairs
    for name, a, b in pairs:
        torch.testing.assert_close(b, math.sqrt(2) * a, msg=name)


def test_unknown_inits_raise():
    with pytest.raises(ValueError, match="glorot-uniform"):
        init_fast_weight(torch.empty(2, 2), "xavier", 2, 2)
    with pytest.raises(ValueError, match="phm_rule_init"):
        PHMRule(4, init="zeros")


@pytest.mark.parametrize("init,check", [
    ("normal", lambda A, r: abs(A.std().item() - r) < 0.15 * r),
    ("uniform", lambda A, r: A.abs().max().item() <= r and A.std().item() > 0.4 * r),
])
@pytest.mark.parametrize("init_range", [1e-4, 0.01])
def test_rule_inits_and_range(init, check, init_range):
    torch.manual_seed(0)
    rule = PHMRule(12, init=init, init_range=init_range)
    assert rule.A.shape == (12, 12, 12)
    assert check(rule.A.detach(), init_range)


@pytest.mark.parametrize("learn", [True, False])
def test_learn_phm_freezes_the_rule(learn):
    assert PHMRule(4, learn=learn).A.requires_grad is learn
    layer = PHMLinear(8, 8, 4, own_rule=True, learn_rule=learn)
    assert layer.rule.A.requires_grad is learn


def test_eval_cache_reuses_w_until_a_weight_changes(monkeypatch):
    layer = PHMLinear(8, 4, 2, own_rule=True).eval()
    calls = []
    original = layer.weight
    monkeypatch.setattr(layer, "weight", lambda rule=None: calls.append(1) or original(rule))
    x = torch.randn(2, 8)
    with torch.no_grad():
        y1 = layer(x)
        y2 = layer(x)
        assert len(calls) == 1 and torch.equal(y1, y2)
        layer.s.add_(1.0)  # an in-place update bumps the version: W is rebuilt
        y3 = layer(x)
    assert len(calls) == 2 and not torch.equal(y1, y3)
    layer.train()
    layer(x).sum().backward()  # training always rebuilds W inside the graph
    assert len(calls) == 3 and layer.s.grad is not None


def test_eval_cache_sees_parameters_replaced_twice_through_data():
    """`p.data = ...` keeps the version; two such replacements could free and reuse the cached
    storage's address, and the cache served the old W."""
    torch.manual_seed(0)
    layer = PHMLinear(64, 8, 4, own_rule=True).eval()
    x = torch.randn(3, 64)
    stale = 0
    for _ in range(50):
        with torch.no_grad():
            layer(x)
            layer.s.data = torch.randn_like(layer.s)
            layer.s.data = torch.randn_like(layer.s)
            stale += not torch.allclose(layer(x), torch.addmm(layer.bias, x, layer.weight()))
    assert stale == 0


@pytest.mark.parametrize("write,seen", [
    (lambda p: p.data.mul_(2), False),  # .data: no version bump
    (lambda p: p.detach().numpy().__imul__(2), False),  # a NumPy view: no version bump
    (lambda p: p.detach().mul_(2), True),  # detach() shares the counter
    (lambda p: p.mul_(2), True),
])
def test_eval_cache_misses_exactly_the_writes_that_bypass_the_version_counter(write, seen):
    """What PHMLinear's docstring promises: such a write serves the old W until model.eval()."""
    torch.manual_seed(0)
    layer = PHMLinear(64, 8, 4, own_rule=True).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = layer(x)
        write(layer.s)
        fresh = torch.addmm(layer.bias, x, layer.weight())
        assert torch.equal(layer(x), fresh) is seen and torch.equal(layer(x), before) is not seen
        layer.eval()
        assert torch.equal(layer(x), fresh)


def test_shared_rule_layer_called_without_its_rule_says_so():
    layer = PHMLinear(8, 4, 2).eval()  # no rule of its own
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="pass the shared rule A"):
            layer(torch.randn(2, 8))


def test_low_rank_linear_is_u_v_transpose():
    layer = LowRankLinear(12, 6, rank=2).double()
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ (layer.u @ layer.v) + layer.bias)
    assert sum(p.numel() for p in LowRankLinear(768, 24, bias=False).parameters()) == 768 + 24
