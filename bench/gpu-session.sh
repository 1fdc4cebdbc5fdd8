#!/usr/bin/env bash
# One prepared call on a lent GPU machine (docs/speed.md, "Measuring on a GPU"): the benchmark with every run
# (the recipes under a 16 GiB cap), the same runs profiled, and the GPU check, all written to $OUT.
#
# Prepare here first (both folders are ignored by git; the device tool carries them):
#   .ref/tinyllama/       TinyLlama's config.json and tokenizer files; .ref/human-like-dpo/*.json real DPO rows
#   .whl/                 the wheels the machine lacks (trl, peft, datasets, ... and liger-kernel)
# Then: run(command="bash bench/gpu-session.sh", carry=[".ref", ".whl"]). TINY=--tiny runs it all on a CPU.
set -uo pipefail
OUT=${OUT:?set OUT to the folder the results go to}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
REFERENCE=()
[ -d .ref/tinyllama ] && REFERENCE=(--reference .ref)
status=0
python3 -m tools.bench "${REFERENCE[@]}" ${TINY:-} --out "$OUT" 2>&1 | tail -n 60 || status=1
python3 -m tools.bench "${REFERENCE[@]}" ${TINY:-} --out "$OUT/profiled" --profile --steps 5 \
    --runs sft_peer,sft_project,sft_project_packed,sft_project_packed_dense_mask,dpo_project,generate_stack_batch_64,generate_stack_batch_64_static > "$OUT/profiled.log" 2>&1 || status=1
python3 -m tools.gpu_check "${REFERENCE[@]}" ${TINY:-} --out "$OUT" 2>&1 | tail -n 30 || status=1
exit $status
