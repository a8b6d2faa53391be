#!/usr/bin/env python
"""Numerical cross-check of compacter's PHM adapters against AdapterHub ``adapters`` (an independent implementation).

AdapterHub pins its own transformers (``adapters==1.3.0`` wants ``transformers~=4.57.6``; this project uses
transformers 5.x), so the check runs in two processes that share only files:

* ``--phase dump`` runs in a virtualenv with ``adapters`` installed. It builds a tiny T5 from a config (no
  download), adds AdapterHub Compacter / Compacter++ / PHM-Adapter adapters, fills every adapter weight
  (the PHM rule ``A`` included) with random values of a non-tiny size, runs one random input through ONE
  AdapterHub bottleneck module (``adapters.methods.modeling.Adapter``) in float32 and float64, records the full
  PHM weights ``H = Σ_i A_i ⊗ W_i`` AdapterHub computes, probes where AdapterHub puts the adapter inside a T5
  block, and runs the whole T5 with and without its Compacter adapters. Everything lands in
  ``DIR/adapterhub_dump.safetensors`` + ``DIR/adapterhub_dump.json``.
* ``--phase compare`` runs in this project's environment. It builds compacter's ``BottleneckAdapter`` (and, for
  the end-to-end row, ``compacter.add_adapters`` on the same tiny T5 with the same base weights), copies the
  AdapterHub weights in, runs the same inputs and prints max-abs / relative errors. ``--json PATH`` writes them.
* ``--phase all --adapters-python /tmp/venv-adapters/bin/python`` runs the dump with that interpreter
  (subprocess) and then the comparison in the current one.

Weight mapping (no transpose or reshape is needed: both store the same layouts)::

    AdapterHub PHMLayer                       compacter PHMLinear
    W_left   [n, in/n, r]                 ->  s    [n, p, r]
    W_right  [n, r, out/n]                ->  t    [n, r, q]
    W        [n, in/n, out/n] (unfactor.) ->  B    [n, p, q]
    b        [out]                        ->  bias [out]
    phm_rule [n, n, n] (own, per layer)   ->  rule.A [n, n, n]           (PHM-Adapter: shared_phm_rule=False)
    shared_parameters[name]["phm_rule"]   ->  model.compacter.rules[name].A  (Compacter: one rule per model)
    bmm(phm_rule_left, phm_rule_right)    ->  A   (AdapterHub's factorized_phm_rule; compacter has no such option)

    Adapter.adapter_down[0] -> BottleneckAdapter.down,  Adapter.adapter_up -> BottleneckAdapter.up

Both compute ``y = x @ H + b`` with ``H[a*p + x, b*q + y] = Σ_i A[i, a, b] * W_i[x, y]`` (H is [in, out]).

Run (see docs/CROSSCHECK.md)::

    python scripts/crosscheck_adapterhub.py --phase all --adapters-python /tmp/venv-adapters/bin/python \\
        --out /tmp/crosscheck --json /tmp/crosscheck/results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import torch

DUMP_TENSORS = "adapterhub_dump.safetensors"
DUMP_META = "adapterhub_dump.json"

# Tiny T5: d_model 96 and a bottleneck of 12 (reduction factor 8) are divisible by n = 4, 6 and 12.
T5_KW = dict(d_model=96, d_ff=192, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=24, vocab_size=128,
             decoder_start_token_id=0, dropout_rate=0.0)
D_MODEL, REDUCTION = 96, 8
BOTTLENECK = D_MODEL // REDUCTION
# Sizes of the random weights: large enough that a wrong layout gives an O(1) error.
RULE_STD, FAST_STD, BIAS_STD = 0.5, 0.5, 0.1

#: name -> (AdapterHub config class, AdapterHub overrides, compacter method, compacter overrides)
VARIANTS = {
    "compacter": ("CompacterConfig", dict(non_linearity="gelu"), "compacter", dict(non_linearity="gelu")),
    "compacter-gelu_new": ("CompacterConfig", dict(non_linearity="gelu_new"), "compacter", dict(non_linearity="gelu_new")),
    "compacter-n6-r3": ("CompacterConfig", dict(non_linearity="gelu", phm_dim=6, phm_rank=3), "compacter",
                        dict(non_linearity="gelu", phm_dim=6, phm_rank=3)),
    "compacter++": ("CompacterPlusPlusConfig", dict(non_linearity="gelu"), "compacter++", dict(non_linearity="gelu")),
    "phm-adapter-n12": ("CompacterConfig", dict(non_linearity="gelu", phm_dim=12, factorized_phm_W=False, shared_phm_rule=False),
                        "phm-adapter", dict(non_linearity="gelu", phm_dim=12)),
    "factorized-rule": ("CompacterConfig", dict(non_linearity="gelu", factorized_phm_rule=True), "compacter",
                        dict(non_linearity="gelu")),
}
#: Variants whose adapter is also run inside the T5 block (the input and residual AdapterHub really uses).
IN_MODEL = ("compacter", "compacter++")
#: The adapter module used for the single-module check: the feed-forward adapter of encoder block 0.
AH_SITE = "encoder.block.0.layer.1"
E2E_VARIANT = "compacter"


def t5_config(transformers):
    return transformers.T5Config(**T5_KW)


def _c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


# ----------------------------------------------------------------------------------------------------------------------
# phase 1: AdapterHub
# ----------------------------------------------------------------------------------------------------------------------
def _ah_randomize(adapter, shared: dict, gen: torch.Generator) -> None:
    with torch.no_grad():
        for pname, p in adapter.named_parameters():
            std = BIAS_STD if pname.endswith(".b") else (RULE_STD if "phm_rule" in pname else FAST_STD)
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for p in shared.values():
            p.copy_(torch.randn(p.shape, generator=gen) * RULE_STD)


def _ah_model(adapters, transformers, cls_name: str, overrides: dict, name: str):
    model = transformers.T5ForConditionalGeneration(t5_config(transformers))
    model.config._attn_implementation = "eager"
    adapters.init(model)
    config = getattr(adapters, cls_name)(reduction_factor=REDUCTION, **overrides)
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    model.eval()
    return model, config


def _ah_call(adapter, shared: dict, name: str, x: torch.Tensor, residual: torch.Tensor):
    """Run one AdapterHub ``Adapter`` outside a model forward: it reads shared PHM weights from a ForwardContext."""
    from adapters.context import ForwardContext

    ctx = ForwardContext.__new__(ForwardContext)  # a bare context: only shared_parameters is read
    ctx.shared_parameters = {name: shared}
    with ctx, torch.no_grad():
        out, down, up = adapter(x, residual_input=residual)
    return out, down, up


def _ah_full_weight(layer, shared: dict, name: str, dtype) -> torch.Tensor:
    """AdapterHub's own H [in, out]: the layer applied (bias removed) to the identity, which is exact."""
    from adapters.context import ForwardContext

    layer = copy.deepcopy(layer).to(dtype)
    layer.b = None
    ctx = ForwardContext.__new__(ForwardContext)
    ctx.shared_parameters = {name: shared}
    with ctx, torch.no_grad():
        return layer(torch.eye(layer.in_features, dtype=dtype))


def phase_dump(out_dir: str, seed: int) -> None:
    import adapters
    import safetensors.torch
    import transformers
    from adapters.methods.modeling import Adapter

    os.makedirs(out_dir, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {
        "versions": {"adapters": adapters.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
        "t5": T5_KW, "d_model": D_MODEL, "bottleneck": BOTTLENECK, "seed": seed,
        "stds": {"rule": RULE_STD, "fast": FAST_STD, "bias": BIAS_STD}, "site": AH_SITE, "variants": {},
    }
    name = "ah"
    for vi, (vname, (cls_name, ah_over, our_method, our_over)) in enumerate(VARIANTS.items()):
        torch.manual_seed(seed + vi)
        gen = torch.Generator().manual_seed(seed + 100 + vi)
        model, config = _ah_model(adapters, transformers, cls_name, ah_over, name)
        modules = dict(model.named_modules())
        adapter = modules[f"{AH_SITE}.adapters.{name}"]
        assert isinstance(adapter, Adapter), type(adapter)
        shared = dict(model.base_model.shared_parameters[name]) if name in model.base_model.shared_parameters else {}
        _ah_randomize(adapter, shared, gen)
        x = torch.randn(2, 7, D_MODEL, generator=gen)
        p = f"{vname}/"
        tensors[p + "x"] = _c(x)
        for pname, par in adapter.named_parameters():
            tensors[p + "ah/" + pname] = _c(par)
        for sname, par in shared.items():
            tensors[p + "shared/" + sname] = _c(par)
        down_layer, up_layer = adapter.adapter_down[0], adapter.adapter_up
        for dtype, tag in ((torch.float32, "32"), (torch.float64, "64")):
            a = copy.deepcopy(adapter).to(dtype)
            sh = {k: v.detach().to(dtype) for k, v in shared.items()}
            xx = x.to(dtype)
            out, down, up = _ah_call(a, sh, name, xx, xx)
            tensors[p + "out" + tag] = _c(out)
            tensors[p + "down_act" + tag] = _c(down)
            tensors[p + "up" + tag] = _c(up)
            tensors[p + "H_down" + tag] = _c(_ah_full_weight(down_layer, sh, name, dtype))
            tensors[p + "H_up" + tag] = _c(_ah_full_weight(up_layer, sh, name, dtype))
        v = {"adapterhub_class": cls_name, "adapterhub_overrides": ah_over, "our_method": our_method, "our_overrides": our_over,
             "adapterhub_config": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                                   for k, v in config.to_dict().items()},
             "adapter_module": repr(adapter)}
        if vname in IN_MODEL:
            v["in_model"] = _ah_in_model(model, adapter, gen, tensors, p)
        meta["variants"][vname] = v
        if vname == E2E_VARIANT:
            meta["e2e"] = _ah_end_to_end(model, name, gen, tensors)
    meta["init_probe"] = _ah_init_probe(adapters, transformers, seed)
    safetensors.torch.save_file(tensors, os.path.join(out_dir, DUMP_TENSORS))
    with open(os.path.join(out_dir, DUMP_META), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"dumped {len(tensors)} tensors for {len(VARIANTS)} variants to {out_dir} "
          f"(adapters {adapters.__version__}, transformers {transformers.__version__}, torch {torch.__version__})")


def _ah_init_probe(adapters, transformers, seed: int) -> dict:
    """What AdapterHub's default Compacter init draws (hypercomplex_nonlinearity defaults to "glorot-uniform")."""
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**dict(T5_KW, d_model=768, num_heads=4, d_kv=192)))
    adapters.init(model)
    config = adapters.CompacterConfig()
    model.add_adapter("probe", config=config)
    w = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n.endswith("adapter_down.0.W_left")])
    p_ = 768 // config.phm_dim  # W_left[i] is [p, rank]: Glorot fans p and rank
    return {
        "hypercomplex_nonlinearity": config.hypercomplex_nonlinearity, "non_linearity": config.non_linearity,
        "W_left(down) count": w.numel(), "std": float(w.std()), "max|w|": float(w.abs().max()),
        "glorot_uniform_bound": (6.0 / (p_ + config.phm_rank)) ** 0.5, "glorot_std": (2.0 / (p_ + config.phm_rank)) ** 0.5,
        "kurtosis (normal 3, uniform 1.8)": float(((w - w.mean()) ** 4).mean() / w.var() ** 2),
        "shared phm_rule std": float(model.base_model.shared_parameters["probe"]["phm_rule"].std()),
        "phm_init_range": config.phm_init_range,
    }


def _ah_in_model(model, adapter, gen, tensors, p) -> dict:
    """Run the whole T5 and catch what the chosen adapter really gets (x, residual) and returns, and where it sits."""
    modules = dict(model.named_modules())
    sublayer, ffn = modules[AH_SITE], modules[f"{AH_SITE}.DenseReluDense"]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        sublayer.register_forward_pre_hook(lambda m, args: seen.__setitem__("block_in", args[0])),
        ffn.register_forward_hook(lambda m, args, out: seen.__setitem__("ffn_out", out)),
        adapter.register_forward_hook(lambda m, args, kwargs, out: seen.update(
            x=args[0], residual=kwargs.get("residual_input", args[1] if len(args) > 1 else None), out=out[0]), with_kwargs=True),
        sublayer.register_forward_hook(lambda m, args, out: seen.__setitem__("block_out", out)),
    ]
    ids = torch.randint(3, T5_KW["vocab_size"], (2, 7), generator=gen)
    with torch.no_grad():
        model(input_ids=ids, decoder_input_ids=ids[:, :5])
    for h in hooks:
        h.remove()
    for k in ("x", "residual", "out"):
        tensors[p + "model_" + k] = _c(seen[k])
    h, f, x, r = seen["block_in"], seen["ffn_out"], seen["x"], seen["residual"]
    mx = lambda t: float(t.abs().max())  # noqa: E731
    return {  # where AdapterHub applies the adapter in a T5 feed-forward sub-layer h -> h + FFN(LN(h))
        "max|x - ffn_out|": mx(x - f), "max|x - (ffn_out + h)|": mx(x - (f + h)),
        "max|residual - x|": mx(r - x), "max|residual - ffn_out|": mx(r - f),
        "max|block_out - (adapter_out + h)|": mx(seen["block_out"] - (seen["out"] + h)),
        "max|block_out - adapter_out|": mx(seen["block_out"] - seen["out"]),
    }


def _ah_end_to_end(model, name, gen, tensors) -> dict:
    """Randomize every adapter of the model, run the T5 with and without them, save base + adapter weights."""
    from adapters.methods.modeling import Adapter

    shared = dict(model.base_model.shared_parameters[name])
    sites = [m for m, mod in model.named_modules() if isinstance(mod, Adapter)]
    for i, site in enumerate(sites):
        _ah_randomize(dict(model.named_modules())[site], shared if i == 0 else {}, gen)
    ids = torch.randint(3, T5_KW["vocab_size"], (2, 7), generator=gen)
    dec = torch.randint(3, T5_KW["vocab_size"], (2, 5), generator=gen)
    with torch.no_grad():
        with_adapters = model(input_ids=ids, decoder_input_ids=dec).logits
        model.set_active_adapters(None)
        base = model(input_ids=ids, decoder_input_ids=dec).logits
        model.set_active_adapters(name)
    for k, v in model.state_dict().items():
        if ".adapters." in k or k.startswith("shared_parameters") or ".shared_parameters." in k:
            continue
        tensors["e2e/base/" + k] = _c(v)
    for site in sites:
        for pname, par in dict(model.named_modules())[site].named_parameters():
            tensors[f"e2e/ah/{site.rsplit('.adapters.', 1)[0]}/{pname}"] = _c(par)
    for sname, par in shared.items():
        tensors["e2e/shared/" + sname] = _c(par)
    tensors["e2e/input_ids"], tensors["e2e/decoder_input_ids"] = ids, dec
    tensors["e2e/logits"], tensors["e2e/logits_base"] = _c(with_adapters), _c(base)
    return {"sites": [s.rsplit(".adapters.", 1)[0] for s in sites]}


# ----------------------------------------------------------------------------------------------------------------------
# phase 2: compacter
# ----------------------------------------------------------------------------------------------------------------------
def _err(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    ours, ref = ours.double(), ref.double()
    diff = float((ours - ref).abs().max())
    return diff, diff / max(float(ref.abs().max()), 1e-300)


def _rule_from(ah: dict, shared: dict, prefix: str) -> torch.Tensor | None:
    """AdapterHub's rule A [n, n, n] for one PHMLayer: its own, or the shared one (materialized if factorized)."""
    for src, key in ((ah, prefix + "phm_rule"), (shared, "phm_rule")):
        if key in src:
            return src[key]
    for src, left, right in ((ah, prefix + "phm_rule_left", prefix + "phm_rule_right"), (shared, "phm_rule_left", "phm_rule_right")):
        if left in src:
            return torch.bmm(src[left], src[right])
    return None


def _load_phm(ours, ah: dict, prefix: str, shared: dict) -> torch.Tensor | None:
    """Copy AdapterHub PHMLayer ``prefix*`` into compacter PHMLinear ``ours``; return the shared rule if one is used."""
    with torch.no_grad():
        if ours.factorized:
            ours.s.copy_(ah[prefix + "W_left"])  # [n, in/n, r] -> [n, p, r], no transpose
            ours.t.copy_(ah[prefix + "W_right"])  # [n, r, out/n] -> [n, r, q], no transpose
        else:
            ours.B.copy_(ah[prefix + "W"])  # [n, in/n, out/n] -> [n, p, q], no transpose
        ours.bias.copy_(ah[prefix + "b"])
        rule = _rule_from(ah, shared, prefix)
        if ours.rule is not None:
            ours.rule.A.copy_(rule)
            return None
        return rule


def _our_adapter(method: str, overrides: dict, ah: dict, shared: dict, dtype):
    import compacter
    from compacter.adapters import BottleneckAdapter

    config = compacter.CompacterConfig(method, bottleneck_dim=BOTTLENECK, **overrides)
    adapter = BottleneckAdapter(config, D_MODEL).to(dtype).eval()
    # Cast first: AdapterHub's factorized rule (left @ right) must be multiplied out in the compared dtype.
    ah = {k: v.to(dtype) for k, v in ah.items()}
    shared = {k: v.to(dtype) for k, v in shared.items()}
    rule = _load_phm(adapter.down, ah, "adapter_down.0.", shared)
    _load_phm(adapter.up, ah, "adapter_up.", shared)
    return adapter, (None if rule is None else rule.to(dtype))


def _controls(adapter, rule, x, ref) -> list[dict]:
    """Wrong layouts must fail: A_i transposed, and kron(W_i, A_i) instead of kron(A_i, W_i)."""
    rows = []
    for label, make in (("A_i transposed", lambda A, B: torch.einsum("iba,ixy->axby", A, B)),
                        ("kron(W_i, A_i) order", lambda A, B: torch.einsum("iab,ixy->xayb", A, B))):
        def lin(layer, h, make=make):
            A = layer.rule.A if layer.rule is not None else rule
            B = layer.fast_weight()
            W = make(A, B).reshape(layer.in_features, layer.out_features)
            return h @ W + layer.bias
        with torch.no_grad():
            out = lin(adapter.up, adapter.act(lin(adapter.down, x))) + x
        abs_err, rel = _err(out, ref)
        rows.append({"check": f"control: {label}", "max_abs": abs_err, "rel": rel})
    return rows


def phase_compare(dump_dir: str, tol32: float, tol64: float) -> dict:
    import compacter
    import safetensors.torch
    import transformers

    tensors = safetensors.torch.load_file(os.path.join(dump_dir, DUMP_TENSORS))
    with open(os.path.join(dump_dir, DUMP_META)) as f:
        meta = json.load(f)
    rows: list[dict] = []

    def add(variant, check, dtype, ours, ref, tol):
        abs_err, rel = _err(ours, ref)
        rows.append({"variant": variant, "check": check, "dtype": dtype, "max_abs": abs_err, "rel": rel,
                     "max_ref": float(ref.abs().max()), "tol_rel": tol, "ok": rel <= tol})

    for vname, v in meta["variants"].items():
        p = f"{vname}/"
        ah = {k[len(p) + 3:]: t for k, t in tensors.items() if k.startswith(p + "ah/")}
        shared = {k[len(p) + 7:]: t for k, t in tensors.items() if k.startswith(p + "shared/")}
        for dtype, tag, tol in ((torch.float32, "32", tol32), (torch.float64, "64", tol64)):
            adapter, rule = _our_adapter(v["our_method"], v["our_overrides"], ah, shared, dtype)
            x = tensors[p + "x"].to(dtype)
            with torch.no_grad():
                W_down, W_up = adapter.down.weight(rule), adapter.up.weight(rule)
                add(vname, "W_down = kronecker_sum", f"float{tag}", W_down, tensors[p + "H_down" + tag], tol)
                add(vname, "W_up = kronecker_sum", f"float{tag}", W_up, tensors[p + "H_up" + tag], tol)
                h = adapter.act(adapter.down(x, rule))
                add(vname, "act(down(x))", f"float{tag}", h, tensors[p + "down_act" + tag], tol)
                add(vname, "up(act(down(x)))", f"float{tag}", adapter.up(h, rule), tensors[p + "up" + tag], tol)
                add(vname, "adapter(x)", f"float{tag}", adapter(x, rule), tensors[p + "out" + tag], tol)
                if tag == "32" and p + "model_x" in tensors:
                    mx, mr = tensors[p + "model_x"], tensors[p + "model_residual"]
                    ours = adapter.up(adapter.act(adapter.down(mx, rule)), rule) + mr
                    add(vname, "in T5: up(act(down(x)))+residual", "float32", ours, tensors[p + "model_out"], tol)
            if tag == "64":
                for r in _controls(adapter, rule, x, tensors[p + "out64"]):
                    rows.append({"variant": vname, "dtype": "float64", "max_ref": float(tensors[p + "out64"].abs().max()),
                                 "tol_rel": tol, "ok": r["rel"] > 1e-2, "expect": "large error", **r})
    if "e2e" in meta:
        rows.extend(_compare_end_to_end(tensors, meta, tol32, transformers, compacter))
    versions = {"compacter": compacter.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    result = {"adapterhub": meta["versions"], "adapterhub_init_probe": meta.get("init_probe"), "ours": versions, "placement_probe": {k: v.get("in_model") for k, v in meta["variants"].items()
                                                                                      if "in_model" in v},
              "rows": rows, "all_ok": all(r["ok"] for r in rows)}
    _print(result)
    return result


def _compare_end_to_end(tensors, meta, tol, transformers, compacter) -> list[dict]:
    """Same T5 base weights and all 8 AdapterHub Compacter adapters + shared rule copied into compacter.add_adapters."""
    model = transformers.T5ForConditionalGeneration(t5_config(transformers))
    model.config._attn_implementation = "eager"
    base = {k[len("e2e/base/"):]: t for k, t in tensors.items() if k.startswith("e2e/base/")}
    missing, unexpected = model.load_state_dict(base, strict=False)
    missing = [k for k in missing if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"base weights do not line up: missing {missing}, unexpected {unexpected}")
    model.eval()
    ids, dec = tensors["e2e/input_ids"], tensors["e2e/decoder_input_ids"]
    with torch.no_grad():
        base_logits = model(input_ids=ids, decoder_input_ids=dec).logits
    v = meta["variants"][E2E_VARIANT]
    compacter.add_adapters(model, compacter.CompacterConfig(v["our_method"], bottleneck_dim=BOTTLENECK, **v["our_overrides"]))
    model.eval()
    modules = dict(model.named_modules())
    shared = {k[len("e2e/shared/"):]: t for k, t in tensors.items() if k.startswith("e2e/shared/")}
    sites = meta["e2e"]["sites"]
    for site in sites:  # AdapterHub site (the T5 sub-layer) -> compacter target (its last projection)
        target = site + (".SelfAttention.o" if site.endswith(".layer.0") else ".DenseReluDense.wo")
        ours = modules[target].compacter_adapters["default"]
        ah = {k[len(f"e2e/ah/{site}/"):]: t for k, t in tensors.items() if k.startswith(f"e2e/ah/{site}/")}
        _load_phm(ours.down, ah, "adapter_down.0.", shared)
        _load_phm(ours.up, ah, "adapter_up.", shared)
    n_ours = sum(1 for m in modules.values() if type(m).__name__ == "BottleneckAdapter")
    if n_ours != len(sites):
        raise RuntimeError(f"compacter placed {n_ours} adapters, AdapterHub {len(sites)}")
    with torch.no_grad():
        model.compacter.rules["default"].A.copy_(shared["phm_rule"])
        logits = model(input_ids=ids, decoder_input_ids=dec).logits
    rows = []
    for check, ours, ref in (("T5 logits, no adapters (base)", base_logits, tensors["e2e/logits_base"]),
                             (f"T5 logits, {len(sites)} adapters", logits, tensors["e2e/logits"])):
        abs_err, rel = _err(ours, ref)
        rows.append({"variant": "end-to-end " + E2E_VARIANT, "check": check, "dtype": "float32", "max_abs": abs_err, "rel": rel,
                     "max_ref": float(ref.abs().max()), "tol_rel": tol, "ok": rel <= tol})
    d_abs, d_rel = _err(tensors["e2e/logits"], tensors["e2e/logits_base"])
    rows.append({"variant": "end-to-end " + E2E_VARIANT, "check": "control: adapters change logits by", "dtype": "float32",
                 "max_abs": d_abs, "rel": d_rel, "max_ref": float(tensors["e2e/logits_base"].abs().max()), "tol_rel": tol,
                 "ok": d_rel > 1e-2, "expect": "large difference"})
    return rows


def _print(result: dict) -> None:
    print(f"AdapterHub side: {result['adapterhub']}")
    print(f"compacter side:  {result['ours']}")
    head = f"{'variant':<24} {'check':<36} {'dtype':<8} {'max abs err':>12} {'rel err':>10} {'max|ref|':>9}  ok"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        print(f"{r['variant']:<24} {r['check']:<36} {r['dtype']:<8} {r['max_abs']:>12.3e} {r['rel']:>10.3e} "
              f"{r['max_ref']:>9.3g}  {'ok' if r['ok'] else 'FAIL'}")
    for vname, probe in result["placement_probe"].items():
        print(f"AdapterHub placement in a T5 FFN sub-layer ({vname}): " + ", ".join(f"{k}={v:.3g}" for k, v in probe.items()))
    if result.get("adapterhub_init_probe"):
        print("AdapterHub default Compacter init: " + ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["adapterhub_init_probe"].items()))
    print("ALL OK" if result["all_ok"] else "SOME CHECKS FAILED")


# ----------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", choices=("dump", "compare", "all"), default="all")
    ap.add_argument("--out", default="crosscheck-out", help="folder of the AdapterHub dump (written by dump, read by compare)")
    ap.add_argument("--adapters-python", default="/tmp/venv-adapters/bin/python",
                    help="interpreter with AdapterHub `adapters` installed (used by --phase all)")
    ap.add_argument("--json", help="write the comparison results here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol32", type=float, default=1e-5, help="relative tolerance (max abs err / max |ref|) in float32")
    ap.add_argument("--tol64", type=float, default=1e-12, help="relative tolerance in float64")
    args = ap.parse_args(argv)
    if args.phase == "dump":
        phase_dump(args.out, args.seed)
        return 0
    if args.phase == "all":
        cmd = [args.adapters_python, os.path.abspath(__file__), "--phase", "dump", "--out", args.out, "--seed", str(args.seed)]
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    result = phase_compare(args.out, args.tol32, args.tol64)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
