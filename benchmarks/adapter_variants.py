#!/usr/bin/env python
"""Candidate rewrites of the compacter++ adapter, timed alone against the library's own code.

Not library code: small prototypes to size an optimisation before it is made in src/. Every
variant computes the same ``A(x) = up(gelu(down(x))) + x`` with the same parameters (checked against
the library's BottleneckAdapter to 1e-5 before timing), forward + backward (grads w.r.t. x and every
parameter), at the activations of one T5 site; then the PHM weights of every FFN site of the model,
built layer by layer, stacked by hand, and by the library's weight bank. fp32 only (the 1e-5 check
is an fp32 check). The variants of a table are timed interleaved (one call of each per round);
compare ratios within one run. ``--json PATH`` writes the rows.

    python benchmarks/adapter_variants.py --size small --batch 4 --src-len 128 --tgt-len 16 --threads 1
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    SIZES, common_args, environment, interleaved, resolve_shape, summarise, timing_fields, write_json,
)


def lib_forward(adapter, x, rule):
    return adapter(x, rule)


def phm_weight_broadcast(rule, s, t):
    """W = sum_i A_i (x) (s_i t_i): broadcasting + sum instead of one GEMM (compacter.phm.kronecker_sum)."""
    n, p, _ = s.shape
    q = t.shape[-1]
    b = torch.bmm(s, t)  # [n, p, q]
    w = (rule[:, :, None, :, None] * b[:, None, :, None, :]).sum(0)  # [n(a), p, n(b), q]
    return w.reshape(n * p, n * q)


def phm_weight_mm(rule, s, t):
    """The same W with one matmul: [a*b, i] @ [i, p*q] (contraction over i as a plain GEMM); the
    library's kronecker_sum does the same since it replaced its einsum, so this now times an inline
    copy of the library's W."""
    n, p, _ = s.shape
    q = t.shape[-1]
    b = torch.bmm(s, t).reshape(n, p * q)  # [i, p*q]
    w = rule.permute(1, 2, 0).reshape(n * n, n) @ b  # [a*b, p*q]
    return w.view(n, n, p, q).permute(0, 2, 1, 3).reshape(n * p, n * q)


def addmm_forward(adapter, x, rule, weight_fn=None):
    """Bias folded into addmm for down, residual folded into addmm for up (bias added in place);
    W from ``weight_fn``, else the library's ``PHMLinear.weight``."""
    d, u = adapter.down, adapter.up
    w_d = weight_fn(rule, d.s, d.t) if weight_fn else d.weight(rule)
    w_u = weight_fn(rule, u.s, u.t) if weight_fn else u.weight(rule)
    x2 = x.reshape(-1, x.shape[-1])
    h = adapter.act(torch.addmm(d.bias, x2, w_d))
    y = torch.addmm(x2, h, w_u).add_(u.bias)  # x + h @ W_up, then + b_up in place
    return y.view_as(x)


#: the site table's columns: (key in the JSON, header)
SITE_VARIANTS = (
    ("library", "library (BottleneckAdapter forward, W built per layer)"),
    ("addmm", "addmm, residual fused too (library W)"),
    ("broadcast", "addmm + W by broadcasting"),
    ("mm", "addmm + W by one mm (inline)"),
)
#: the all-sites build: (key in the JSON, label)
BUILDS = (
    ("layer by layer", "layer by layer (PHMLinear._build_weight per projection: the library without the bank)"),
    ("stacked", "stacked by hand (one matmul + one kronecker_sum GEMM per direction, unbound per site)"),
    ("bank", "library weight bank (compacter.phm.batched_weights, what a training step runs)"),
)


def main(argv=None) -> list[dict]:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50, help="timed calls of each variant, interleaved (default 50)")
    args = p.parse_args(argv)
    if args.dtype != "fp32" or args.compile:
        p.error("adapter_variants times fp32 eager code only (--dtype fp32, no --compile)")
    resolve_shape(args)
    device = torch.device(args.device)
    import compacter
    from compacter.adapters import BottleneckAdapter
    from compacter.phm import PHMRule, batched_weights, kronecker_sum

    d = SIZES[args.size]["d_model"]
    n_enc, n_dec = SIZES[args.size]["num_layers"], SIZES[args.size]["num_decoder_layers"]
    cfg = compacter.CompacterConfig("compacter++")
    torch.manual_seed(0)
    rule = PHMRule(cfg.phm_dim, init_range=0.1).to(device)  # a larger range than 1e-4 so the check means something
    env = environment()
    settings = dict(device=args.device, size=args.size, dtype=args.dtype, batch=args.batch, src_len=args.src_len,
                    tgt_len=args.tgt_len, reps=args.reps, threads=torch.get_num_threads())
    out: list[dict] = []

    print(f"# adapter variants: T5-{args.size} d_model {d}, {args.device}, {torch.get_num_threads()} threads; "
          f"fwd+bwd, {args.reps} interleaved reps, min ms (x the library's adapter, min/min)\n")
    print("| site | " + " | ".join(h for _, h in SITE_VARIANTS) + " |")
    print("|---|" + "---:|" * len(SITE_VARIANTS))
    variants = {
        "library": lambda a, x: lib_forward(a, x, rule.A),
        "addmm": lambda a, x: addmm_forward(a, x, rule.A),
        "broadcast": lambda a, x: addmm_forward(a, x, rule.A, phm_weight_broadcast),
        "mm": lambda a, x: addmm_forward(a, x, rule.A, phm_weight_mm),
    }
    for label, shape, count in (("encoder", (args.batch, args.src_len, d), n_enc), ("decoder", (args.batch, args.tgt_len, d), n_dec)):
        adapter = BottleneckAdapter(cfg, d).to(device)
        for prm in (adapter.down.bias, adapter.up.bias):
            torch.nn.init.normal_(prm, std=0.1)
        x = torch.randn(*shape, device=device, requires_grad=True)
        g = torch.randn(*shape, device=device)
        ref = lib_forward(adapter, x, rule.A)
        for name, fn in variants.items():
            err = (fn(adapter, x) - ref).abs().max().item()
            assert err < 1e-5, f"{name} differs from the library by {err}"

        def run(fn):
            def step():
                fn(adapter, x).backward(g)
            return step

        ms = interleaved({name: run(fn) for name, fn in variants.items()}, args.reps, device)
        rows = [dict(method=key, label=head, site=label, shape=list(shape), sites=count, **timing_fields(ms[key]), **settings)
                for key, head in SITE_VARIANTS]
        summarise(rows, "library")
        out += rows
        print(f"| {label} {list(shape)} x{count} | "
              + " | ".join(f"{r['ms_min']:.3f} ({r['ratio_to_library_min']:.2f}x)" for r in rows) + " |")

    # Building every site's W at once (one matmul + one contraction for all downs, one for all ups).
    sites = n_enc + n_dec
    k = cfg.bottleneck(d)
    torch.manual_seed(1)
    adapters = [BottleneckAdapter(cfg, d).to(device) for _ in range(sites)]
    layers = [a.down for a in adapters] + [a.up for a in adapters]

    def per_layer():
        sum(layer._build_weight(rule.A).sum() for layer in layers).backward()

    def stacked():
        sd = torch.stack([a.down.s for a in adapters]); td = torch.stack([a.down.t for a in adapters])
        su = torch.stack([a.up.s for a in adapters]); tu = torch.stack([a.up.t for a in adapters])
        wd = kronecker_sum(rule.A, torch.matmul(sd, td))  # [sites, d, k]
        wu = kronecker_sum(rule.A, torch.matmul(su, tu))  # [sites, k, d]
        # one W per site, summed one by one as the other two builds are (one sum over the stack
        # would time fewer kernels for the summation, not a cheaper build)
        sum(w.sum() for w in list(wd.unbind(0)) + list(wu.unbind(0))).backward()

    def bank():
        sum(w.sum() for w in batched_weights(layers, rule.A)).backward()

    w1 = torch.stack([a.down.weight(rule.A) for a in adapters])
    w2 = kronecker_sum(rule.A, torch.matmul(torch.stack([a.down.s for a in adapters]), torch.stack([a.down.t for a in adapters])))
    w3 = torch.stack(batched_weights(layers, rule.A)[:sites])
    assert (w1 - w2).abs().max().item() < 1e-6 and (w1 - w3).abs().max().item() < 1e-6
    ms = interleaved({"layer by layer": per_layer, "stacked": stacked, "bank": bank}, args.reps, device)
    rows = [dict(method=key, label=label, site="all", sites=sites, projections=len(layers), **timing_fields(ms[key]), **settings)
            for key, label in BUILDS]
    summarise(rows, "layer by layer", key="ratio_to_layer_by_layer")
    out += rows
    print(f"\nPHM weights of all {sites} sites ({len(layers)} projections: W_down [{d}, {k}] and W_up [{k}, {d}] each), "
          f"fwd+bwd, min ms (x layer by layer, min/min):\n")
    print("| build | min ms | median ms | x layer by layer (min) | x layer by layer (paired) |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['ms_min']:.3f} | {r['ms_median']:.3f} | {r['ratio_to_layer_by_layer_min']:.2f} "
              f"| {r['ratio_to_layer_by_layer_paired']:.2f} |")
    write_json(args.json, out, env)
    return out


if __name__ == "__main__":
    main()
