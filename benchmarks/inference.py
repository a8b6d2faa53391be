#!/usr/bin/env python
"""Inference cost of adapters: eval forward and greedy ``generate`` vs the base model, all rows in one process.

Rows: ``base`` (the T5 model without adapters: the reference), compacter++ and compacter (ours, eval
mode: the PHM weights W = sum A_i (x) B_i are built once and cached while no weight changes), and the
peers when installed: PEFT LoRA r=8 on q,v (unmerged, and merged into the base weights), AdapterHub
Compacter++ / Compacter. Two measurements per row, each timed round-robin over the rows:

* ``forward``: one teacher-forced forward of the batch under ``torch.no_grad()`` (scoring);
* ``generate``: greedy decoding of exactly ``--tgt-len`` new tokens (``min_new_tokens`` = max), KV cache on.

``--compile`` compiles the model used by the forward measurement only (generate runs eager).

    python benchmarks/inference.py --device cpu --size tiny
    python benchmarks/inference.py --device cuda --size base --dtype bf16 --json infer.json
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    DESCRIPTIONS, Skip, autocast_ctx, build_t5, common_args, count_trainable, environment, fmt_bytes, fmt_count,
    make_batch, prepare_model, print_table, resolve_shape, summarise, sync, timed, write_json,
)

METHODS = ("base", "compacter++", "compacter", "peft-lora", "peft-lora-merged", "ah-compacter++", "ah-compacter")


def build(method: str, args, device):
    if method == "base":
        model = build_t5(args.size, device, args.seed)
        model.requires_grad_(False)
        params = []
    elif method == "peft-lora-merged":
        model, _ = prepare_model("peft-lora", args.size, device, args.seed)
        model = model.merge_and_unload()
        params = []  # merged into the base weights: no separate trained tensors are left
    else:
        model, params = prepare_model(method, args.size, device, args.seed)
    model.eval()
    trainable, total = count_trainable(model, params)
    return model, trainable, total


def runners(model, b, args, device) -> dict:
    """{"forward": one forward pass, "generate": one greedy generation} of ``model`` on batch ``b``."""
    fwd_model = torch.compile(model) if args.compile else model

    def forward():
        with torch.no_grad(), autocast_ctx(device, args.dtype):
            fwd_model(input_ids=b.input_ids, attention_mask=b.attention_mask, decoder_input_ids=b.decoder_input_ids,
                      use_cache=False)

    def generate():
        with torch.no_grad(), autocast_ctx(device, args.dtype):
            model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=args.tgt_len,
                           min_new_tokens=args.tgt_len, do_sample=False, num_beams=1)

    return {"forward": forward, "generate": generate}


def main(argv=None) -> list[dict]:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated; base is always added. Known: {', '.join(METHODS)}")
    p.add_argument("--no-generate", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    resolve_shape(args)
    methods = ["base"] + [m for m in dict.fromkeys(x.strip() for x in args.methods.split(",")) if m and m != "base"]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    device = torch.device(args.device)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    b = make_batch(args.size, args.batch, args.src_len, args.tgt_len, device)
    env = environment()

    kinds = ["forward"] + ([] if args.no_generate else ["generate"])
    peak: dict[str, dict[str, int]] = {}
    if device.type == "cuda":  # peak memory in a separate pass, with only one model resident at a time
        import gc

        for m in methods:
            try:
                model, _, _ = build(m, args, device)
            except Skip:
                continue  # reported below
            peak[m] = {}
            run = runners(model, b, args, device)
            for kind in kinds:
                run[kind]()
                sync(device)
                torch.cuda.reset_peak_memory_stats(device)
                run[kind]()
                sync(device)
                peak[m][kind] = torch.cuda.max_memory_allocated(device)
            del model, run  # the runners' closures hold the model too
            gc.collect()
            torch.cuda.empty_cache()

    rows, skipped = [], {}
    for m in methods:
        try:
            model, trainable, total = build(m, args, device)
        except Skip as exc:
            skipped[m] = str(exc)
            log(f"  skip {m}: {exc}")
            continue
        rows.append(dict(method=m, model=model, trainable=trainable, total=total, **runners(model, b, args, device),
                         times={"forward": [], "generate": []}, peak=peak.get(m, {})))
        log(f"  built {m}")

    for kind in kinds:
        for _ in range(args.warmup):
            for r in rows:
                r[kind]()
        t0 = time.perf_counter()
        for i in range(args.steps):
            for j in range(len(rows)):
                r = rows[(i + j) % len(rows)]
                r["times"][kind].append(timed(r[kind], device))
        log(f"  {kind}: {time.perf_counter() - t0:.1f}s")

    shape = dict(device=args.device, size=args.size, dtype=args.dtype, compile=args.compile, batch=args.batch,
                 src_len=args.src_len, tgt_len=args.tgt_len, steps=args.steps)
    out = []
    for kind in kinds:
        table = []
        for m in methods:
            r = next((x for x in rows if x["method"] == m), None)
            if r is None:
                table.append(dict(method=m, kind=kind, skipped=skipped.get(m, "not built"), ms_median=None, **shape))
                continue
            ms = [t * 1e3 for t in r["times"][kind]]
            table.append(dict(method=m, kind=kind, description=DESCRIPTIONS.get(m, "T5 without adapters"),
                              ms_median=round(statistics.median(ms), 3), ms_min=round(min(ms), 3),
                              ms_all=[round(t, 3) for t in ms], peak_mem_bytes=r["peak"].get(kind),
                              trainable=r["trainable"], total=r["total"], env=env, **shape))
        summarise(table, "base")
        out += table
        if not args.quiet:
            print(f"\nInference ({kind}), T5-{args.size}, {args.device}, {args.dtype}"
                  f"{', compiled' if args.compile and kind == 'forward' else ''}, batch {args.batch}, src {args.src_len}, "
                  f"{'tgt' if kind == 'forward' else 'new tokens'} {args.tgt_len}, {args.steps} runs/row\n")
            print_table(table, "base", [
                ("method", "method", str),
                ("median ms", "ms_median", lambda v: f"{v:.1f}"),
                ("min ms", "ms_min", lambda v: f"{v:.1f}"),
                ("x base (median)", "ratio_to_base", lambda v: f"{v:.3f}"),
                ("x base (min)", "ratio_to_base_min", lambda v: f"{v:.3f}"),
                ("x base (paired)", "ratio_to_base_paired", lambda v: f"{v:.3f}"),
                ("peak mem", "peak_mem_bytes", fmt_bytes),
                ("params", "total", fmt_count),
            ])
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
