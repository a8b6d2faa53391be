#!/usr/bin/env python
"""Candidate rewrites of the compacter++ adapter, timed alone against the library's own code.

Not library code: small prototypes to size an optimisation before it is made in src/. Every
variant computes the same ``A(x) = up(gelu(down(x))) + x`` with the same parameters (checked against
the library's BottleneckAdapter to 1e-5 before timing), forward + backward (grads w.r.t. x and every
parameter), at the activations of one T5 site, and "all sites" variants build the PHM weights of
every FFN site of the model at once.

    python benchmarks/adapter_variants.py --size small --batch 4 --src-len 128 --tgt-len 16 --threads 1
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import SIZES, common_args, resolve_shape, timed  # noqa: E402


def lib_forward(adapter, x, rule):
    return adapter(x, rule)


def phm_weight_broadcast(rule, s, t):
    """W = sum_i A_i (x) (s_i t_i): broadcasting + sum instead of bmm + einsum."""
    n, p, _ = s.shape
    q = t.shape[-1]
    b = torch.bmm(s, t)  # [n, p, q]
    w = (rule[:, :, None, :, None] * b[:, None, :, None, :]).sum(0)  # [n(a), p, n(b), q]
    return w.reshape(n * p, n * q)


def phm_weight_mm(rule, s, t):
    """The same W with one matmul: [a*b, i] @ [i, p*q] (contraction over i as a plain GEMM)."""
    n, p, _ = s.shape
    q = t.shape[-1]
    b = torch.bmm(s, t).reshape(n, p * q)  # [i, p*q]
    w = rule.permute(1, 2, 0).reshape(n * n, n) @ b  # [a*b, p*q]
    return w.view(n, n, p, q).permute(0, 2, 1, 3).reshape(n * p, n * q)


def addmm_forward(adapter, x, rule, weight_fn=None):
    """Bias folded into addmm for down, residual folded into addmm for up (bias added in place)."""
    d, u = adapter.down, adapter.up
    w_d = weight_fn(rule, d.s, d.t) if weight_fn else d.weight(rule)
    w_u = weight_fn(rule, u.s, u.t) if weight_fn else u.weight(rule)
    x2 = x.reshape(-1, x.shape[-1])
    h = adapter.act(torch.addmm(d.bias, x2, w_d))
    y = torch.addmm(x2, h, w_u).add_(u.bias)  # x + h @ W_up, then + b_up in place
    return y.view_as(x)


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    resolve_shape(args)
    device = torch.device(args.device)
    import compacter
    from compacter.adapters import BottleneckAdapter
    from compacter.phm import PHMRule

    d = SIZES[args.size]["d_model"]
    n_enc, n_dec = SIZES[args.size]["num_layers"], SIZES[args.size]["num_decoder_layers"]
    cfg = compacter.CompacterConfig("compacter++")
    torch.manual_seed(0)
    rule = PHMRule(cfg.phm_dim, init_range=0.1).to(device)  # a larger range than 1e-4 so the check means something

    def bench(fn) -> float:
        for _ in range(3):
            fn()
        return min(timed(fn, device) for _ in range(args.reps)) * 1e3

    print(f"# adapter variants: T5-{args.size} d_model {d}, {args.device}, {torch.get_num_threads()} threads; "
          f"fwd+bwd, min of {args.reps}, ms\n")
    print("| site | library | addmm (bias, residual fused) | addmm + W by broadcasting | addmm + W by one mm |")
    print("|---|---:|---:|---:|---:|")
    variants = [
        ("library", lambda a, x: lib_forward(a, x, rule.A)),
        ("addmm", lambda a, x: addmm_forward(a, x, rule.A)),
        ("broadcast", lambda a, x: addmm_forward(a, x, rule.A, phm_weight_broadcast)),
        ("mm", lambda a, x: addmm_forward(a, x, rule.A, phm_weight_mm)),
    ]
    for label, shape, count in (("encoder", (args.batch, args.src_len, d), n_enc), ("decoder", (args.batch, args.tgt_len, d), n_dec)):
        adapter = BottleneckAdapter(cfg, d).to(device)
        for prm in (adapter.down.bias, adapter.up.bias):
            torch.nn.init.normal_(prm, std=0.1)
        x = torch.randn(*shape, device=device, requires_grad=True)
        g = torch.randn(*shape, device=device)
        ref = lib_forward(adapter, x, rule.A)
        for name, fn in variants[1:]:
            err = (fn(adapter, x) - ref).abs().max().item()
            assert err < 1e-5, f"{name} differs from the library by {err}"

        def run(fn):
            def step():
                fn(adapter, x).backward(g)
            return step

        t = [bench(run(fn)) for _, fn in variants]
        print(f"| {label} {list(shape)} x{count} | " + " | ".join(f"{v:.3f}" for v in t) + " |")

    # Building every site's W at once (one bmm + one contraction for all downs, one for all ups).
    sites = n_enc + n_dec
    k = cfg.bottleneck(d)
    torch.manual_seed(1)
    adapters = [BottleneckAdapter(cfg, d).to(device) for _ in range(sites)]

    def per_site():
        ws = [a.down.weight(rule.A) for a in adapters] + [a.up.weight(rule.A) for a in adapters]
        sum(w.sum() for w in ws).backward()

    def batched():
        from compacter.phm import kronecker_sum

        sd = torch.stack([a.down.s for a in adapters]); td = torch.stack([a.down.t for a in adapters])
        su = torch.stack([a.up.s for a in adapters]); tu = torch.stack([a.up.t for a in adapters])
        wd = kronecker_sum(rule.A, torch.matmul(sd, td))  # [sites, d, k]
        wu = kronecker_sum(rule.A, torch.matmul(su, tu))  # [sites, k, d]
        (wd.sum() + wu.sum()).backward()  # (a real model would unbind and hand one W to each site)

    w1 = torch.stack([a.down.weight(rule.A) for a in adapters])
    from compacter.phm import kronecker_sum
    w2 = kronecker_sum(rule.A, torch.matmul(torch.stack([a.down.s for a in adapters]), torch.stack([a.down.t for a in adapters])))
    assert (w1 - w2).abs().max().item() < 1e-6
    print(f"\nPHM weights of all {sites} sites (W_down [{d}, {k}] and W_up [{k}, {d}] each), fwd+bwd: "
          f"per site (library) {bench(per_site):.3f} ms, stacked (one bmm + one einsum per direction) {bench(batched):.3f} ms")


if __name__ == "__main__":
    main()
