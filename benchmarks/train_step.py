#!/usr/bin/env python
"""Time one training step (forward, backward, AdamW) of T5 with each method, all rows in one process.

Rows (default): the floor, compacter++ and compacter (ours), full fine-tuning, and the peers when
installed: PEFT LoRA r=8 on q,v; AdapterHub ``adapters`` Compacter++ / Compacter. A peer that is not
importable is skipped with a message. Every ratio is to the floor:

    floor = forward and backward through the frozen model with no trainable parameter: the input
    embeddings (encoder and decoder) are leaves that require grad, so backward computes the gradient
    w.r.t. every activation down to the embeddings, but no weight gradient, and there is no optimizer
    step. This is the least work any adapter method must do when its adapters sit in every layer.

Rows are timed round-robin (one step of each row per round, the order rotating each round), so the
noise of a shared machine hits every row alike; absolute times are not the point, ratios are.

    python benchmarks/train_step.py --device cpu --size tiny
    python benchmarks/train_step.py --device cuda --size base --dtype bf16 --json bench.json
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    ALL_METHODS, DEFAULT_METHODS, DESCRIPTIONS, Row, Skip, common_args, count_trainable, environment, fmt_bytes,
    fmt_count, make_batch, make_train_step, measure_peak_memory, prepare_model, print_table, resolve_shape,
    round_robin, summarise, write_json,
)

AH_METHODS = ("ah-compacter++", "ah-compacter")


def parse_args(argv=None):
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated rows; the floor is always added (default: {','.join(DEFAULT_METHODS)}). "
                        f"Known: {', '.join(ALL_METHODS)}")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3; does not change the cost)")
    p.add_argument("--optim", choices=("default", "foreach", "fused", "for-loop"), default="default",
                   help="AdamW implementation (default: torch's choice: for-loop on cpu, foreach on cuda)")
    p.add_argument("--mem-steps", type=int, default=3, help="cuda: steps per row of the separate peak-memory pass (default 3)")
    p.add_argument("--adapters-python", default=os.environ.get("ADAPTERS_PYTHON"),
                   help="a python with AdapterHub `adapters` installed: when `adapters` is not importable here, "
                        "the ah-* rows run in that interpreter (with their own floor; marked in the table)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(ALL_METHODS)}")
    args.methods = ["floor"] + [m for m in dict.fromkeys(methods) if m != "floor"]
    resolve_shape(args)
    return args


def build_row(method: str, args, device, batch) -> Row:
    model, params = prepare_model(method, args.size, device, args.seed)
    kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False}}[args.optim]
    opt = torch.optim.AdamW(params, lr=args.lr, **kw) if params else None
    trainable, total = count_trainable(model, params)
    row = Row(method, model, params, opt, trainable, total)
    compiled = torch.compile(model) if args.compile else model
    row.step = make_train_step(row, batch, device, args.dtype, compiled)
    return row


def adapters_importable() -> bool:
    try:
        import adapters  # noqa: F401
        return True
    except Exception:
        return False


def run_adapters_elsewhere(args, log) -> list[dict] | None:
    """Run the ah-* rows (and a floor of their own) in ``--adapters-python``; None if that fails."""
    wanted = [m for m in args.methods if m in AH_METHODS]
    if not wanted or not args.adapters_python:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ah.json")
        cmd = [args.adapters_python, os.path.abspath(__file__), "--methods", ",".join(["floor"] + wanted), "--optim", args.optim,
               "--device", args.device, "--size", args.size, "--dtype", args.dtype, "--batch", str(args.batch),
               "--src-len", str(args.src_len), "--tgt-len", str(args.tgt_len), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seed", str(args.seed), "--mem-steps", str(args.mem_steps), "--json", out, "--quiet"]
        if args.compile:
            cmd.append("--compile")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log(f"running {', '.join(wanted)} in {args.adapters_python} (separate process, own floor)")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            log(f"  failed (rc={proc.returncode}): {proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}")
            return None
        with open(out) as fh:
            rows = json.load(fh)
    for r in rows:
        r["process"] = f"separate ({args.adapters_python})"
        if r["method"] == "floor":
            r["method"] = "floor (ah venv)"
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    batch = make_batch(args.size, args.batch, args.src_len, args.tgt_len, device)
    env = environment()
    where = env.get("gpu", f"{env['threads']} threads")
    log(f"T5-{args.size} on {args.device} ({where}), {args.dtype}"
        f"{', compiled' if args.compile else ''}; batch {args.batch} x src {args.src_len} -> tgt {args.tgt_len}; "
        f"{args.warmup} warm-up + {args.steps} timed steps per row, round-robin")

    elsewhere = None
    methods = list(args.methods)
    if any(m in AH_METHODS for m in methods) and not adapters_importable() and args.adapters_python:
        methods = [m for m in methods if m not in AH_METHODS]
        elsewhere = run_adapters_elsewhere(args, log)
        if elsewhere is None:
            methods = list(args.methods)  # fall back: report them as skipped below

    skipped: dict[str, str] = {}
    peak: dict[str, int | None] = {}
    if device.type == "cuda":  # peak memory with only one row resident at a time
        for m in methods:
            try:
                row = build_row(m, args, device, batch)
            except Skip as exc:
                skipped[m] = str(exc)
                continue
            for _ in range(max(1, args.warmup)):
                row.step()
            peak[m] = measure_peak_memory(row, args.mem_steps, device)
            log(f"  peak memory {m}: {fmt_bytes(peak[m])}")
            del row
            gc.collect()  # a model kept alive by a reference cycle would count in the next row's peak
            torch.cuda.empty_cache()

    rows: list[Row] = []
    for m in methods:
        if m in skipped:
            continue
        t0 = time.perf_counter()
        try:
            row = build_row(m, args, device, batch)
        except Skip as exc:
            skipped[m] = str(exc)
            log(f"  skip {m}: {exc}")
            continue
        row.peak_mem_bytes = peak.get(m)
        rows.append(row)
        log(f"  built {m}: {fmt_count(row.trainable)} trainable of {fmt_count(row.total)} ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    round_robin(rows, args.steps, args.warmup, device, log)
    log(f"  timed in {time.perf_counter() - t0:.1f}s")

    shape = dict(device=args.device, size=args.size, dtype=args.dtype, compile=args.compile, optim=args.optim, batch=args.batch,
                 src_len=args.src_len, tgt_len=args.tgt_len, steps=args.steps, warmup=args.warmup)
    out: list[dict] = []
    for m in args.methods:
        row = next((r for r in rows if r.method == m), None)
        if row is None:
            if m in skipped:
                out.append(dict(method=m, description=DESCRIPTIONS[m], skipped=skipped[m], ms_median=None, ms_min=None,
                                peak_mem_bytes=None, trainable=None, **shape))
            continue
        ms = [t * 1e3 for t in row.times]
        out.append(dict(
            method=m, description=DESCRIPTIONS[m],
            ms_median=round(statistics.median(ms), 3), ms_min=round(min(ms), 3), ms_mean=round(statistics.fmean(ms), 3),
            ms_all=[round(t, 3) for t in ms], peak_mem_bytes=row.peak_mem_bytes, trainable=row.trainable,
            total=row.total, trainable_pct=round(100 * row.trainable / row.total, 4), process="this", **shape,
        ))
    summarise(out, "floor")
    if elsewhere:
        summarise(elsewhere, "floor (ah venv)", key="ratio_to_floor")
        out += elsewhere
    for r in out:
        if r.get("process") == "this":  # rows from --adapters-python carry that interpreter's own env
            r["env"] = env

    columns = [
        ("method", "method", str),
        ("median ms", "ms_median", lambda v: f"{v:.1f}"),
        ("min ms", "ms_min", lambda v: f"{v:.1f}"),
        ("x floor (median)", "ratio_to_floor", lambda v: f"{v:.2f}"),
        ("x floor (min)", "ratio_to_floor_min", lambda v: f"{v:.2f}"),
        ("x floor (paired)", "ratio_to_floor_paired", lambda v: f"{v:.2f}"),
        ("peak mem", "peak_mem_bytes", fmt_bytes),
        ("trainable", "trainable", fmt_count),
        ("trainable %", "trainable_pct", lambda v: f"{v:.3f}"),
    ]
    if not args.quiet:
        print(f"\nTraining step, T5-{args.size}, {args.device}, {args.dtype}{', compiled' if args.compile else ''}, "
              f"AdamW {args.optim}, "
              f"batch {args.batch}, src {args.src_len}, tgt {args.tgt_len}, {args.steps} steps/row (torch {env['torch']}, "
              f"{env.get('gpu', str(env['threads']) + ' threads')})\n")
        print_table(out, "floor", columns)
        if elsewhere:
            print(f"\nrows marked 'ah venv' ran in {args.adapters_python}; their ratios are to that process's floor.")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
