#!/bin/bash
# All of issue 4's GPU measurements in one prepared command (a device lease is ~15 minutes):
#
#   device run:  bash benchmarks/gpu_checks.sh        (JSON + logs packed in $OUT/gpu-checks.tgz)
#   dry run here: OUT=/tmp/gpu-dry DEVICE=cpu SIZE=tiny LARGE=tiny bash benchmarks/gpu_checks.sh
#
# Uses the machine's own python3 (torch, transformers 5, accelerate, peft are in that image) with
# this tree's src/ on the path. AdapterHub rows run only when wheels for adapters and its
# transformers 4.x are carried in .whl/ (see docs/BENCHMARKS.md); otherwise they are skipped.
# Each step has its own time limit, and all steps together stop at TOTAL seconds (default 560) after
# the start, inside one 10-minute device command: a step gets what is left when it starts, and one
# with under 15 s left is skipped. The order: T5-base bf16 eager, compiled, fp32, T5-large, inference, the profile, generation.
# The device tool brings back at most 8 files, so logs and JSON are written to a work folder and
# packed into $OUT/gpu-checks.tgz after every step (a step cut off by the 10-minute limit still
# leaves the archive of the steps before it).
# STEPS="name name ..." runs only the steps of those names (as printed after ===), for a rerun of
# what a first lease did not finish.
set -u
OUT=${OUT:-/tmp/gpu-checks}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-base}
LARGE=${LARGE:-large}
PY=${PY:-python3}
TOTAL=${TOTAL:-560}
STEPS=${STEPS:-}
START=$(date +%s)
WORK=$(mktemp -d /tmp/gpu-work.XXXXXX)
mkdir -p "$OUT"
pack() { tar czf "$OUT/.gpu-checks.tgz" -C "$WORK" . && mv "$OUT/.gpu-checks.tgz" "$OUT/gpu-checks.tgz"; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ROWS=floor,compacter++,compacter,compacter++-nobank,compacter-nobank,full,peft-lora,compacter++-noln,compacter++-autograd-norms
AH=()
if [ -d .whl ] && ls .whl/adapters-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/ah-site .whl/*.whl \
    && printf '#!/bin/bash\nPYTHONPATH=/tmp/ah-site:%s exec %s "$@"\n' "$PWD/src" "$(command -v $PY)" > /tmp/ah-python \
    && chmod +x /tmp/ah-python && AH=(--adapters-python /tmp/ah-python) && ROWS=$ROWS,ah-compacter++,ah-compacter
fi
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  if [ -n "$STEPS" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
  local left=$(( START + TOTAL - $(date +%s) ))
  if [ "$left" -lt 15 ]; then echo "=== $name skipped: ${left}s left of ${TOTAL}s"; return; fi
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name ($(date +%T), limit ${limit}s)"
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  echo "    exit $? ($(date +%T))"; tail -n 14 "$WORK/$name.log"
  pack
}
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__)") > "$WORK/env.txt" 2>&1
step train-$SIZE-bf16 120 $PY benchmarks/train_step.py --device $DEVICE --size $SIZE --dtype bf16 --methods $ROWS "${AH[@]}" --json "$WORK/train-$SIZE-bf16.json"
step train-$SIZE-bf16-compile 330 $PY benchmarks/train_step.py --device $DEVICE --size $SIZE --dtype bf16 --compile --steps 15 --methods floor,compacter++,compacter --json "$WORK/train-$SIZE-bf16-compile.json"
step train-$SIZE-fp32 100 $PY benchmarks/train_step.py --device $DEVICE --size $SIZE --dtype fp32 --steps 15 --warmup 3 --methods $ROWS "${AH[@]}" --json "$WORK/train-$SIZE-fp32.json"
step train-$LARGE-bf16 90 $PY benchmarks/train_step.py --device $DEVICE --size $LARGE --dtype bf16 --batch 32 --methods floor,compacter++,compacter,full,peft-lora "${AH[@]}" --json "$WORK/train-$LARGE-bf16-b32.json"
# forward (scoring) and greedy generation apart: 8 generations per row did not finish in 45 s on the H200
step infer-$SIZE-bf16-fwd 30 $PY benchmarks/inference.py --device $DEVICE --size $SIZE --dtype bf16 --steps 8 --warmup 2 --no-generate --json "$WORK/infer-$SIZE-bf16-fwd.json"
if [ ${#AH[@]} -gt 0 ]; then  # AdapterHub's inference rows, against a base model of that process's transformers
  step infer-$SIZE-bf16-fwd-ah 30 /tmp/ah-python benchmarks/inference.py --device $DEVICE --size $SIZE --dtype bf16 --steps 8 --warmup 2 --no-generate --methods base,ah-compacter++,ah-compacter --json "$WORK/infer-$SIZE-bf16-fwd-ah.json"
fi
step profile-$SIZE-bf16 45 $PY benchmarks/profile_step.py --device $DEVICE --size $SIZE --dtype bf16 --steps 10 --row-limit 25 --no-micro
step infer-$SIZE-bf16-gen 60 $PY benchmarks/inference.py --device $DEVICE --size $SIZE --dtype bf16 --steps 3 --warmup 1 --methods base,compacter++,compacter,peft-lora --json "$WORK/infer-$SIZE-bf16-gen.json"
pack && tar tzvf "$OUT/gpu-checks.tgz"
