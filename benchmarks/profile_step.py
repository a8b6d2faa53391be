#!/usr/bin/env python
"""Where does a compacter++ training step spend its time above the floor? torch.profiler, op by op.

For each row (default: the floor and compacter++) the script warms up, then profiles ``--steps``
training steps (the same step as benchmarks/train_step.py), the rows round-robin and one profiler
session per step; every number is the median over those steps. It prints

1. the top ops by self time (CPU, or CUDA with --device cuda), per step;
2. the difference table: for every op, self time per step and calls per step in the row minus the
   floor, sorted by the extra time: this is where the time over the floor goes;
3. named ranges: the forward of our adapter hooks (``compacter::adapter``), the PHM weight build
   inside it: all layers' W at once while training (``compacter::phm_weight_bank``, inside the
   first adapter call of a forward pass), layer by layer otherwise (``compacter::phm_weight``), and
   the optimizer step; these wrap library functions from outside (the library is not changed),
   forward only: backward ops run in the autograd engine;
4. a micro-benchmark: one adapter alone on the activations of one site ([B, S, d] encoder,
   [B, T, d] decoder), forward+backward, split into its parts, times the number of sites, and the
   batched build of every site's W that a training step actually uses: the adapters' own share
   of the step.

    python benchmarks/profile_step.py --device cpu --size small --batch 2
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from _common import (  # noqa: E402
    ALL_METHODS, SIZES, Row, common_args, count_trainable, make_batch, make_train_step, prepare_model,
    resolve_shape, timed,
)


_ORIGINALS: dict = {}  # what instrument_library replaced, for uninstrument_library


def instrument_library() -> None:
    """Wrap the adapter hook and the PHM weight build in profiler ranges (monkeypatch, no src change)."""
    from compacter import inject, phm

    hook, weight, bank = inject.AdapterSite.hook, phm.PHMLinear.weight, inject.batched_weights
    if getattr(hook, "_bench_wrapped", False):
        return
    _ORIGINALS.update(hook=hook, weight=weight, bank=bank)

    def bank_rf(layers, rule, dtype=None):
        with record_function("compacter::phm_weight_bank"):
            return bank(layers, rule, dtype)

    def hook_rf(self, module, args, output):
        with record_function("compacter::adapter"):
            return hook(self, module, args, output)

    def weight_rf(self, rule=None):
        with record_function("compacter::phm_weight"):
            return weight(self, rule)

    hook_rf._bench_wrapped = True
    inject.AdapterSite.hook = hook_rf
    phm.PHMLinear.weight = weight_rf
    inject.batched_weights = bank_rf


def uninstrument_library() -> None:
    """Undo instrument_library. The micro-benchmarks time the library itself: a range costs a few
    µs even with no profiler running, and the layer-by-layer build would pay it once per layer
    where the batched build (called from compacter.phm directly) paid nothing."""
    from compacter import inject, phm

    if _ORIGINALS:
        inject.AdapterSite.hook = _ORIGINALS.pop("hook")
        phm.PHMLinear.weight = _ORIGINALS.pop("weight")
        inject.batched_weights = _ORIGINALS.pop("bank")


def build_row(method, args, device, batch) -> Row:
    model, params = prepare_model(method, args.size, device, args.seed)
    from compacter.training import adamw

    opt = adamw(params, lr=3e-3) if params else None  # the optimizer `compacter train` uses
    trainable, total = count_trainable(model, params)
    row = Row(method, model, params, opt, trainable, total)
    row.step = make_train_step(row, batch, device, args.dtype, torch.compile(model) if args.compile else model)
    return row


def profile_rows(rows: list[Row], args, device) -> dict[str, dict]:
    """Profile the rows round-robin, one profiler session per step (order rotating each round).

    Returns {method: {op: (self_us, calls, total_us)}} per step, each the median over the profiled
    steps (an op missing from a step counts as 0 there): medians keep one noisy step on a shared
    machine from dominating a row.
    """
    for _ in range(args.warmup):
        for row in rows:
            row.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    cuda = device.type == "cuda"
    samples = {row.method: [] for row in rows}
    for r in range(args.steps):
        for i in range(len(rows)):
            row = rows[(r + i) % len(rows)]
            with profile(activities=acts) as prof:
                with record_function("bench::step"):
                    row.step()
                    if cuda:
                        torch.cuda.synchronize()  # inside the range: its CPU time is the step's wall time
            ops = {}
            for e in prof.key_averages():
                # CPU-side events only. On cuda, kineto also lists every kernel on its own, its time
                # already in the device time of the op that launched it (summing both counted it
                # twice), and a device-side copy of each record_function range under the same
                # name, with no CPU time (it overwrote the step's and the named ranges' times).
                if e.device_type != DeviceType.CPU:
                    continue
                self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
                # named ranges (the step, our ranges, the optimizer): wall (CPU) time; ops: device time on cuda
                named = e.key.startswith(("bench::", "compacter::", "Optimizer."))
                total_us = e.cpu_time_total if (named or not cuda) else e.device_time_total
                ops[e.key] = (self_us, e.count, total_us)
            samples[row.method].append(ops)
    out = {}
    for m, steps in samples.items():
        keys = set().union(*steps)
        out[m] = {k: tuple(statistics.median(s.get(k, (0, 0, 0))[j] for s in steps) for j in range(3)) for k in keys}
    return out


def print_top(name: str, ops: dict, args, unit: str) -> None:
    step = ops.get("bench::step", (0, 0, 0))[2]
    print(f"\n### {name}: top {args.row_limit} ops by self {unit} time (median per step over {args.steps} steps; "
          f"step {step / 1e3:.2f} ms)\n")
    print("| op | self ms/step | % of step | calls/step |")
    print("|---|---:|---:|---:|")
    items = sorted(((v[0], k, v[1]) for k, v in ops.items() if not k.startswith(("bench::", "compacter::", "Optimizer."))),
                   reverse=True)
    for self_us, k, calls in items[: args.row_limit]:
        print(f"| `{k}` | {self_us / 1e3:.2f} | {100 * self_us / step if step else 0:.1f} | {calls:.0f} |")


def print_diff(base: dict, other: dict, name: str, args, unit: str, ref: str = "floor") -> None:
    keys = set(base) | set(other)
    rows = []
    for k in keys:
        if k.startswith(("bench::", "compacter::", "Optimizer.", "ProfilerStep")):
            continue
        b = base.get(k, (0.0, 0.0, 0.0))
        o = other.get(k, (0.0, 0.0, 0.0))
        rows.append((o[0] - b[0], k, b[0], o[0], b[1], o[1]))
    rows.sort(reverse=True)
    step_b = base.get("bench::step", (0, 0, 0))[2]
    step_o = other.get("bench::step", (0, 0, 0))[2]
    print(f"\n### {name} minus {ref}, per step (self {unit} time; ms)\n")
    print(f"step (profiled, wall of the bench::step range): {ref} {step_b / 1e3:.2f} ms, {name} {step_o / 1e3:.2f} ms, "
          f"extra {(step_o - step_b) / 1e3:+.2f} ms ({step_o / step_b:.3f}x)\n" if step_b else "")
    print(f"| op | {ref} ms | {name} ms | extra ms | {ref} calls | {name} calls |")
    print("|---|---:|---:|---:|---:|---:|")
    total_pos = sum(r[0] for r in rows if r[0] > 0)
    for d, k, b, o, cb, co in rows[: args.row_limit]:
        print(f"| `{k}` | {b / 1e3:.2f} | {o / 1e3:.2f} | {d / 1e3:+.2f} | {cb:.0f} | {co:.0f} |")
    neg = [r for r in rows if r[0] < 0][-5:]
    if neg:
        print("| ... ops that got cheaper: | | | | | |")
        for d, k, b, o, cb, co in sorted(neg):
            print(f"| `{k}` | {b / 1e3:.2f} | {o / 1e3:.2f} | {d / 1e3:+.2f} | {cb:.0f} | {co:.0f} |")
    print(f"\nsum of positive extras: {total_pos / 1e3:.2f} ms/step; "
          f"net over all ops: {sum(r[0] for r in rows) / 1e3:+.2f} ms/step")
    ranges = {k: v for k, v in other.items() if k.startswith(("compacter::", "Optimizer."))}
    if ranges:
        print(f"\nnamed ranges in {name} (total CPU-side time per step, calls per step):\n")
        for k, (s, c, t) in sorted(ranges.items(), key=lambda kv: -kv[1][2]):
            print(f"  {k:55s} {t / 1e3:8.2f} ms  x{c:.0f}")


# --------------------------------------------------------------------------------------------------
# micro-benchmark: one adapter alone
# --------------------------------------------------------------------------------------------------

def layer_weight(layer, rule: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One PHM layer's W as its training forward gets it without the bank: built by the library
    (``PHMLinear._build_weight``: the layer's dtype, autocast off) and cast once to the dtype the
    forward computes in (autocast's, where it is on), as ``PHMLinear.forward`` does, so that layer
    by layer and ``batched_weights`` (which casts once per group) do the same computation.
    (``PHMLinear.weight`` called under autocast would run its products in bf16: not what the
    library does.)"""
    from compacter.phm import _autocast_dtype

    w = layer._build_weight(rule)
    dtype = _autocast_dtype(device.type)
    return w if dtype is None or w.dtype == dtype else w.to(dtype)


def micro(args, device) -> None:
    import compacter
    from compacter.adapters import BottleneckAdapter
    from compacter.phm import PHMRule

    d = SIZES[args.size]["d_model"]
    L_enc, L_dec = SIZES[args.size]["num_layers"], SIZES[args.size]["num_decoder_layers"]
    reps = max(20, args.steps * 5)

    def bench(fn) -> float:  # min over reps: the best estimate of an op's cost on a shared machine
        for _ in range(3):
            fn()
        return min(timed(fn, device) for _ in range(reps)) * 1e3

    print(f"\n### micro-benchmark: one adapter alone, forward+backward (min of {reps}; ms)\n")
    print("| site activations | compacter++ adapter | PHM weight build (2 projections; autocast off, cast once) "
          "| x@W + bias + GELU + residual only "
          "| dense bottleneck (pfeiffer) | identity (x*1) |")
    print("|---|---:|---:|---:|---:|---:|")
    total_adapter = 0.0
    for label, shape, count in (("encoder", (args.batch, args.src_len, d), L_enc), ("decoder", (args.batch, args.tgt_len, d), L_dec)):
        cfg = compacter.CompacterConfig("compacter++")
        torch.manual_seed(0)
        adapter = BottleneckAdapter(cfg, d).to(device)
        rule = PHMRule(cfg.phm_dim, init_range=cfg.phm_init_range).to(device)
        dense = BottleneckAdapter(compacter.CompacterConfig("pfeiffer"), d).to(device)
        x = torch.randn(*shape, device=device, requires_grad=True)
        g = torch.randn(*shape, device=device)

        def full():
            y = adapter(x, rule.A)
            y.backward(g)

        def weights():
            w1 = layer_weight(adapter.down, rule.A, device)
            w2 = layer_weight(adapter.up, rule.A, device)
            (w1.sum() + w2.sum()).backward()

        with autocast(device, args.dtype):  # W in the dtype the matmuls get it in (the cast is in the column before)
            w_down = layer_weight(adapter.down, rule.A, device).detach().requires_grad_(True)
            w_up = layer_weight(adapter.up, rule.A, device).detach().requires_grad_(True)
        b_down, b_up = adapter.down.bias, adapter.up.bias
        act = adapter.act

        def matmuls():
            y = act(x @ w_down + b_down) @ w_up + b_up + x
            y.backward(g)

        def pfeiffer():
            y = dense(x)
            y.backward(g)

        def ident():
            (x * 1.0).backward(g)

        with autocast(device, args.dtype):
            t = [bench(full), bench(weights), bench(matmuls), bench(pfeiffer), bench(ident)]
        total_adapter += t[0] * count
        print(f"| {label} [{', '.join(map(str, shape))}] x{count} sites | " + " | ".join(f"{v:.3f}" for v in t) + " |")
    print(f"\nadapters alone, all {L_enc + L_dec} FFN sites of compacter++: {total_adapter:.2f} ms per step "
          "(forward+backward, no optimizer, no layer-norm grads), each site building its own W")
    # a training step builds every site's W in one batched product (compacter.phm.batched_weights)
    from compacter.phm import PHMLinear, batched_weights

    torch.manual_seed(0)
    cfg = compacter.CompacterConfig("compacter++")
    layers = [PHMLinear(k, q, cfg.phm_dim).to(device) for _ in range(L_enc + L_dec)
              for k, q in ((d, cfg.bottleneck(d)), (cfg.bottleneck(d), d))]
    rule = PHMRule(cfg.phm_dim, init_range=cfg.phm_init_range).to(device)

    def bank():
        sum(w.sum() for w in batched_weights(layers, rule.A)).backward()

    def one_by_one():
        sum(layer_weight(layer, rule.A, device).sum() for layer in layers).backward()

    with autocast(device, args.dtype):
        batched, separate = bench(bank), bench(one_by_one)
    print(f"W of all {len(layers)} projections, forward+backward: {batched:.3f} ms batched (what a training step does) "
          f"vs {separate:.3f} ms layer by layer (what the per-site column above adds up)")


def optim_micro(args, device) -> None:
    """AdamW.step over compacter++'s trainable tensors: torch's implementations side by side."""
    model, params = prepare_model("compacter++", args.size, device, args.seed)
    for q in params:
        q.grad = torch.randn_like(q)
    n_el = sum(q.numel() for q in params)
    reps = max(20, args.steps * 5)
    print(f"\n### micro-benchmark: AdamW.step over compacter++'s {len(params)} trainable tensors ({n_el} values; "
          f"min of {reps}; ms)\n")
    print("| implementation | ms/step |")
    print("|---|---:|")
    for label, kw in (("for-loop (foreach=False; cpu default)", {"foreach": False}),
                      ("foreach=True (cuda default)", {"foreach": True}), ("fused=True", {"fused": True})):
        try:
            opt = torch.optim.AdamW(params, lr=3e-3, **kw)
            for _ in range(3):
                opt.step()
            t = min(timed(opt.step, device) for _ in range(reps)) * 1e3
            print(f"| {label} | {t:.3f} |")
        except Exception as exc:  # fused is not implemented everywhere
            print(f"| {label} | n/a ({type(exc).__name__}) |")
    del model


def autocast(device, dtype):
    from _common import autocast_ctx

    return autocast_ctx(device, dtype)


def main(argv=None) -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="floor,compacter++", help=f"rows; the first is the reference. Known: {', '.join(ALL_METHODS)}")
    for action in p._actions:
        if action.dest == "steps":
            action.help = "profiled steps per row (default 7)"
    p.add_argument("--row-limit", type=int, default=20)
    p.add_argument("--no-micro", action="store_true")
    p.add_argument("--no-top", action="store_true", help="skip the per-row top-op tables (print only the differences)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 7
    resolve_shape(args)
    device = torch.device(args.device)
    instrument_library()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    batch = make_batch(args.size, args.batch, args.src_len, args.tgt_len, device)
    unit = "CUDA" if device.type == "cuda" else "CPU"
    print(f"# profile: T5-{args.size}, {args.device}, {args.dtype}{', compiled' if args.compile else ''}, batch {args.batch}, "
          f"src {args.src_len}, tgt {args.tgt_len}, {args.steps} profiled steps after {args.warmup} warm-up "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    rows = [build_row(m, args, device, batch) for m in methods]
    results = profile_rows(rows, args, device)
    if not args.no_top:
        for m in methods:
            print_top(m, results[m], args, unit)
    ref = methods[0]
    for m in methods[1:]:
        print_diff(results[ref], results[m], m, args, unit, ref)
    del rows
    uninstrument_library()
    if not args.no_micro:
        micro(args, device)
        optim_micro(args, device)


if __name__ == "__main__":
    main()
