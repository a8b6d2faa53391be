"""Shared pieces of the benchmarks: T5 shapes, batches, the methods compared, timing and the table.

Nothing here imports ``compacter``, ``peft`` or ``adapters`` at module level, so that a script can
run the rows of one library in an environment that lacks the others (AdapterHub ``adapters`` pins
an older transformers and lives in its own virtualenv).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

# --------------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------------

#: T5 v1.0 shapes (ReLU FFN, tied embeddings). "tiny" is ours: a smoke size that runs in well under a
#: minute on 2 CPU cores; its vocabulary is cut so that the LM head does not dominate the step.
SIZES: dict[str, dict] = {
    "tiny": dict(d_model=256, d_ff=1024, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=64, vocab_size=8192),
    "small": dict(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=32128),
    "base": dict(d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=32128),
    "large": dict(d_model=1024, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16, d_kv=64, vocab_size=32128),
}

#: Default (batch, source length, target length). GPU: the paper-like 64 x 128 -> 16 at every size.
#: CPU: what keeps one step in the 0.05-2 s range on 2 cores.
CPU_SHAPES = {"tiny": (8, 64, 16), "small": (4, 128, 16), "base": (2, 128, 16), "large": (1, 128, 16)}
GPU_SHAPE = (64, 128, 16)


def t5_config(size: str):
    from transformers import T5Config

    return T5Config(**SIZES[size], feed_forward_proj="relu", dropout_rate=0.1, tie_word_embeddings=True,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


#: (size, seed) -> (a built model kept on the CPU, the RNG state its build left). Random
#: initialisation is mostly single-threaded (T5-base 6.5 s, T5-large 31 s per build) and the
#: scripts build every row twice on a GPU (a memory pass, then the timed pass), so later builds
#: copy the first one: the same weights, and the same RNG state for what is initialised next.
_BUILT: dict[tuple[str, int], tuple[torch.nn.Module, torch.Tensor]] = {}


def build_t5(size: str, device: torch.device, seed: int = 0):
    """A randomly initialised T5ForConditionalGeneration (fp32 weights, train mode), the same for
    the same ``(size, seed)`` however often it is built."""
    import copy

    from transformers import T5ForConditionalGeneration

    if (size, seed) not in _BUILT:
        torch.manual_seed(seed)
        built = T5ForConditionalGeneration(t5_config(size))
        _BUILT[(size, seed)] = (built, torch.get_rng_state())
    built, rng = _BUILT[(size, seed)]
    model = copy.deepcopy(built).to(device)
    torch.manual_seed(seed)  # CUDA's generators too, as a fresh build seeded them (the CPU init draws none of theirs)
    torch.set_rng_state(rng)  # what adapters or LoRA initialise next draws what it drew after a fresh build
    model.train()
    return model


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, T]
    decoder_input_ids: torch.Tensor  # [B, T] labels shifted right (what T5 builds from labels)


def make_batch(size: str, batch: int, src_len: int, tgt_len: int, device: torch.device, seed: int = 1) -> Batch:
    vocab = SIZES[size]["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab, (batch, src_len), generator=g)
    labels = torch.randint(2, vocab, (batch, tgt_len), generator=g)
    decoder_input_ids = torch.cat([torch.zeros(batch, 1, dtype=torch.long), labels[:, :-1]], dim=1)
    return Batch(input_ids.to(device), torch.ones_like(input_ids).to(device), labels.to(device), decoder_input_ids.to(device))


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------

#: Rows in the default order. "floor" is the reference every ratio is taken to.
OURS = ("compacter++", "compacter")
#: opt-in with --methods. "<method>-noln": the same adapters without training the layer norms (the
#: AdapterHub default, so the like-for-like comparison with the ah-* rows).
EXTRA_OURS = ("compacter++-nobank", "compacter-nobank", "compacter++-noln", "compacter-noln",
              "compacter++-autograd-norms", "compacter-autograd-norms", "ln-only", "pfeiffer", "adapter", "adapterdrop", "adapter-lowrank", "phm-adapter", "bitfit")
PEERS = ("peft-lora", "ah-compacter++", "ah-compacter")
DEFAULT_METHODS = ("floor",) + OURS + ("full",) + PEERS
ALL_METHODS = DEFAULT_METHODS + EXTRA_OURS

DESCRIPTIONS = {
    "floor": "frozen model, fwd+bwd to the input embeddings, no weight grads, no optimizer",
    "compacter++": "compacter: CompacterConfig('compacter++') (LPHM n=4 r=1 after FFN, + layer norms)",
    "compacter": "compacter: CompacterConfig('compacter') (LPHM after attention and FFN, + layer norms)",
    "compacter++-nobank": "compacter++ with each PHM layer building its own W (the weight bank switched off)",
    "compacter-nobank": "compacter with each PHM layer building its own W (the weight bank switched off)",
    "compacter++-noln": "compacter: CompacterConfig('compacter++', train_layer_norms=False)",
    "compacter-noln": "compacter: CompacterConfig('compacter', train_layer_norms=False)",
    "compacter++-autograd-norms": "compacter++ with its trained RMS norms run by the norm classes' own forward (compacter.norms off)",
    "compacter-autograd-norms": "compacter with its trained RMS norms run by the norm classes' own forward (compacter.norms off)",
    "ln-only": "compacter: layer norms trained, no adapter (compacter++ minus its adapters)",
    "pfeiffer": "compacter: CompacterConfig('pfeiffer') (dense bottleneck after FFN, + layer norms)",
    "adapter": "compacter: CompacterConfig('adapter') (dense Houlsby, + layer norms)",
    "adapterdrop": "compacter: CompacterConfig('adapterdrop') (dense Houlsby, none in each stack's first 5 layers, + layer norms)",
    "adapter-lowrank": "compacter: CompacterConfig('adapter-lowrank')",
    "phm-adapter": "compacter: CompacterConfig('phm-adapter')",
    "bitfit": "compacter: CompacterConfig('bitfit')",
    "full": "full fine-tuning: every weight, AdamW",
    "peft-lora": "peft LoraConfig(r=8, lora_alpha=16, target_modules=['q','v'], dropout 0)",
    "ah-compacter++": "AdapterHub adapters: add_adapter(config='compacter++') + train_adapter",
    "ah-compacter": "AdapterHub adapters: add_adapter(config='compacter') + train_adapter",
}


class Skip(Exception):
    """A row that cannot run here (library not installed); the message says why."""


def _peer_import(module: str, hint: str):
    try:
        return __import__(module)
    except Exception as exc:  # ImportError, or a version clash raised at import time
        raise Skip(f"{module} not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); {hint}")


def prepare_model(method: str, size: str, device: torch.device, seed: int = 0):
    """The model of one row with its trainable parameters set; returns ``(model, trainable_params)``.

    ``trainable_params`` is what the optimizer gets (empty for the floor).
    """
    if method in ("ah-compacter++", "ah-compacter"):
        adapters = _peer_import("adapters", "pip install adapters in its own venv and pass --adapters-python")
        model = build_t5(size, device, seed)
        adapters.init(model)
        model.add_adapter("bench", config=method[3:])
        model.train_adapter("bench")
        model.to(device)
        model.train()
        return model, [p for p in model.parameters() if p.requires_grad]
    if method == "peft-lora":
        peft = _peer_import("peft", "pip install peft")
        model = build_t5(size, device, seed)
        cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
        model = peft.get_peft_model(model, cfg)
        model.train()
        return model, [p for p in model.parameters() if p.requires_grad]
    model = build_t5(size, device, seed)
    if method == "floor":
        model.requires_grad_(False)
        return model, []
    if method == "full":
        model.requires_grad_(True)
        return model, list(model.parameters())
    import compacter

    if method == "ln-only":  # what compacter++ trains besides its adapters
        config = compacter.CompacterConfig("bitfit", train_biases=False, add_missing_biases=False)
    elif method.endswith("-noln"):
        config = compacter.CompacterConfig(method[: -len("-noln")], train_layer_norms=False)
    else:
        config = compacter.CompacterConfig(method.removesuffix("-nobank").removesuffix("-autograd-norms"))
    model = compacter.add_adapters(model, config)
    if method.endswith("-nobank"):  # what the batched build of all W buys (inject.CompacterState)
        compacter.inject.get_state(model)._banked.clear()
    model.train()
    return model, compacter.trainable_parameters(model)


def count_trainable(model, params) -> tuple[int, int]:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    if hasattr(model, "compacter"):  # our library: count the model as it computes (active adapter + rule)
        import compacter

        return compacter.count_parameters(model)
    return sum(p.numel() for p in params), total


def embed_module(model):
    """The (shared) input embedding of a T5 model, through peft / torch.compile wrappers."""
    return model.get_input_embeddings()


@dataclass
class Row:
    method: str
    model: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer | None
    trainable: int
    total: int
    times: list = field(default_factory=list)  # seconds per timed step
    peak_mem_bytes: int | None = None
    step: Callable[[], None] | None = None


def autocast_ctx(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(row: Row, batch: Batch, device: torch.device, dtype: str, compiled) -> Callable[[], None]:
    """One optimisation step: forward (autocast in bf16), loss, backward, AdamW step, zero_grad.

    The floor: the same forward, the input embeddings (encoder and decoder) are leaves that require
    grad, so backward computes the gradient w.r.t. every activation down to the embeddings but no
    weight gradient; there is no optimizer step.
    """
    model, opt = compiled, row.optimizer
    emb = embed_module(row.model)

    if row.method == "floor":
        def step():
            with torch.no_grad():
                x = emb(batch.input_ids)
                y = emb(batch.decoder_input_ids)
            x.requires_grad_(True)
            y.requires_grad_(True)
            with autocast_ctx(device, dtype):
                loss = model(inputs_embeds=x, attention_mask=batch.attention_mask, decoder_inputs_embeds=y,
                             labels=batch.labels, use_cache=False).loss
            loss.backward()
        return step

    def step():
        with lean_norms(not row.method.endswith("-autograd-norms")):
            with autocast_ctx(device, dtype):
                loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             decoder_input_ids=batch.decoder_input_ids, labels=batch.labels, use_cache=False).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


@contextlib.contextmanager
def lean_norms(enabled: bool):
    """compacter.norms on or off (rows "-autograd-norms": trained RMS norms as their classes compute them)."""
    norms = sys.modules.get("compacter.norms")
    if norms is None or enabled:
        yield
        return
    norms.ENABLED = False
    try:
        yield
    finally:
        norms.ENABLED = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def round_robin(rows: list[Row], steps: int, warmup: int, device: torch.device, log=None) -> None:
    """Warm every row up, then time ``steps`` steps of each, one step per row per round.

    The order of the rows rotates every round, so slow phases of a shared machine hit every row alike
    and no row always runs right after the same neighbour.
    """
    n = len(rows)
    for _ in range(warmup):
        for row in rows:
            row.step()
    sync(device)
    for r in range(steps):
        for i in range(n):
            row = rows[(r + i) % n]
            row.times.append(timed(row.step, device))
        if log is not None and (r + 1) % max(1, steps // 5) == 0:
            log(f"  round {r + 1}/{steps}")


def interleaved(fns: dict[str, Callable[[], None]], reps: int, device: torch.device, warmup: int = 3) -> dict[str, list[float]]:
    """Time each of ``fns`` ``reps`` times, one call of each per round, the order rotating each
    round (as :func:`round_robin` does with steps): ``{name: [ms per call]}``, for the micro
    benchmarks that compare a few ways to compute one thing."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            out[name].append(timed(fns[name], device) * 1e3)
    return out


def timing_fields(ms: list[float], digits: int = 4) -> dict:
    """``ms_median``, ``ms_min``, ``ms_mean`` and ``ms_all`` of one row, as the JSON rows have them
    (and as :func:`summarise` reads them)."""
    return dict(ms_median=round(statistics.median(ms), digits), ms_min=round(min(ms), digits),
                ms_mean=round(statistics.fmean(ms), digits), ms_all=[round(t, digits) for t in ms])


def measure_peak_memory(row: Row, steps: int, device: torch.device) -> int | None:
    """``torch.cuda.max_memory_allocated`` over ``steps`` steps with only this row resident (None on CPU)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        row.step()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------

def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_count(n: int) -> str:
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.2f}M"
    if n >= 10**3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def summarise(rows: list[dict], ref: str, key: str | None = None) -> list[dict]:
    """Add ratio fields to each row dict that has timings (``key`` defaults to ``ratio_to_<ref>``).

    * ``<key>``: median time of the row / median time of the reference;
    * ``<key>_min``: min / min;
    * ``<key>_paired``: the median over rounds of (row's step / reference's step in the same round):
      the two steps ran in the same round of the rotation (not always adjacent), so slow phases
      of a shared machine largely cancel out.
    """
    key = key or f"ratio_to_{ref}"
    base = next((r for r in rows if r["method"] == ref and r.get("ms_median") is not None), None)
    for r in rows:
        ok = base is not None and r.get("ms_median") is not None
        r[key] = round(r["ms_median"] / base["ms_median"], 4) if ok else None
        r[f"{key}_min"] = round(r["ms_min"] / base["ms_min"], 4) if ok else None
        paired = ok and len(r.get("ms_all") or []) == len(base.get("ms_all") or []) > 0
        r[f"{key}_paired"] = round(statistics.median(a / b for a, b in zip(r["ms_all"], base["ms_all"])), 4) if paired else None
    return rows


def print_table(rows: list[dict], ref: str, columns: list[tuple[str, str, Callable]], out=sys.stdout) -> None:
    """A GitHub-markdown table; ``columns`` = (header, key, formatter)."""
    heads = [h for h, _, _ in columns]
    body = []
    for r in rows:
        if r.get("skipped"):
            body.append([r["method"]] + [""] * (len(columns) - 2) + [f"skipped: {r['skipped']}"])
            continue
        body.append([f(r.get(k)) if r.get(k) is not None or k is None else "-" for _, k, f in columns])
    widths = [max(len(heads[i]), *(len(b[i]) for b in body if b and len(b) > i and not b[-1].startswith("skipped"))) for i in range(len(heads))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(heads), file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for b in body:
        if b[-1].startswith("skipped"):
            print(f"| {b[0]} | {b[-1]} |", file=out)
        else:
            print(line(b), file=out)


def environment() -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("peft", "adapters", "compacter"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            pass
    return env


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda when available, else cpu")
    p.add_argument("--size", choices=tuple(SIZES), default="tiny",
                   help="T5 shapes (default tiny: d_model 256, d_ff 1024, 2+2 layers, vocab 8192)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="default fp32; bf16 = torch.autocast(bfloat16) over fp32 weights")
    p.add_argument("--compile", action="store_true", help="torch.compile the model of every row")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on cuda; size-dependent on cpu")
    p.add_argument("--src-len", type=int, default=None, help="default: 128 on cuda; size-dependent on cpu")
    p.add_argument("--tgt-len", type=int, default=None, help="default: 16")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 30 cuda; cpu 15 tiny, 10 otherwise)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row first (default: 5 cuda, 2 cpu; compile happens here)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu); 1 is the steadier choice on a shared machine")
    p.add_argument("--seed", type=int, default=0, help="model and batch seed (default 0)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the rows as a JSON list")
    return p


def resolve_shape(args) -> None:
    cpu_b, cpu_s, cpu_t = CPU_SHAPES[args.size]
    gb, gs, gt = GPU_SHAPE
    on_gpu = args.device == "cuda"
    args.batch = args.batch or (gb if on_gpu else cpu_b)
    args.src_len = args.src_len or (gs if on_gpu else cpu_s)
    args.tgt_len = args.tgt_len or (gt if on_gpu else cpu_t)
    args.steps = args.steps or (30 if on_gpu else 15 if args.size == "tiny" else 10)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not on_gpu and torch.get_num_threads() > 1 and hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. With {torch.get_num_threads()} torch "
              "threads and other busy processes, OpenMP threads wait on each other and steps can slow down 10-20x "
              "erratically; --threads 1 gives steadier ratios on a shared machine.", file=sys.stderr)
    if on_gpu and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False")


def free(*objs) -> None:
    for o in objs:
        del o
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_json(path: str | None, rows: list[dict], env: dict | None = None) -> None:
    """Write ``rows`` as a JSON list to ``path`` (if given); ``env`` (:func:`environment`) is
    first stamped on every row, as ``rows[i]["env"]``."""
    for row in rows if env is not None else ():
        row["env"] = env
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"wrote {path}")
