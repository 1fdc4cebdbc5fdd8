#!/usr/bin/env bash
# The prepared calls on a lent GPU machine (docs/speed.md, "Measuring on a GPU"), made one right after another:
# between calls the machine keeps what a call left in git-ignored folders (here .gpu/) for 30 s, no longer.
# Prepare here first: bash harness/gpu-prepare.sh REFERENCE_DIR. Then, with the device tool:
#   run(command="bash harness/gpu-session.sh 1", carry=[".ref", ".whl"])   install the wheels; the benchmark,
#       every run profiled after its timed steps, the recipes under a 16 GiB cap, within BENCH_BUDGET_S
#   run(command="bash harness/gpu-session.sh 2", carry=[".carry/2"])       keep the payload's first part
#   run(command="bash harness/gpu-session.sh 3", carry=[".carry/3"])       keep the second
#   run(command="bash harness/gpu-session.sh 4", carry=[".carry/4"])       join and check the parts; SmolLM2 through
#       sft7 and dpo1 on the real rows, evaluated on the fixed sets (harness.real_run); made again at once after its
#       time limit stopped it, it continues that run
#   run(command="bash harness/gpu-session.sh 5")                           the GPU check (harness.gpu_check)
# Step 1 runs the runs BENCH_RUNS names (comma-separated; all by default, in harness.bench's order) and starts none
# after BENCH_BUDGET_S seconds (300); BENCH_RUNS= (empty) only installs. Each writes its results and log to $OUT.
# On a CPU, TINY=--tiny runs steps 1 and 5 small, and REAL_RUN_ARGS (e.g. "--set sft.train_size=8 ...") makes
# step 4's run small.
set -uo pipefail
STEP=${1:?usage: bash harness/gpu-session.sh STEP (1-5)}
OUT=${OUT:?set OUT to the folder the results go to}
export PYTHONUNBUFFERED=1
GPU=.gpu
mkdir -p "$GPU/parts"

if [ "$STEP" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    rm -rf "$GPU/site" "$GPU/payload" "$GPU/real-run"  # a session starts at step 1: nothing of an earlier one stays
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GPU/site" .whl/*.whl || exit 1
fi
# the project's package (src/chattune) is not installed there: it is imported from the working tree
export PYTHONPATH="$PWD/src:$PWD/$GPU/site${PYTHONPATH:+:$PYTHONPATH}"
if [ "$STEP" != 1 ] && [ ! -d "$GPU/site" ] && [ -z "${TINY:-}" ]; then
    echo "gpu-session: $GPU/site is missing: this machine is not the one step 1 ran on (it was given back); start again at step 1" >&2
    exit 3
fi
REFERENCE=()
[ -d .ref/tinyllama ] && REFERENCE=(--reference .ref)

keep_part() {  # the part this call carried, checked against the sums that came with it
    local dir=".carry/$1"
    (cd "$dir" && sha256sum --check --ignore-missing --quiet SHA256SUMS) || { echo "gpu-session: $dir is damaged" >&2; exit 1; }
    cp "$dir"/part-* "$dir/SHA256SUMS" "$GPU/parts/"
    ls -l "$GPU/parts"
}

case "$STEP" in
    1)
        if [ -n "${BENCH_RUNS-all}" ]; then  # BENCH_RUNS= (empty): install only, for a session that runs step 4 alone
            RUNS=()
            [ -n "${BENCH_RUNS:-}" ] && RUNS=(--runs "$BENCH_RUNS")
            python3 -m harness.bench "${REFERENCE[@]}" "${RUNS[@]}" ${TINY:-} --profile --budget-s "${BENCH_BUDGET_S:-300}" \
                --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -n 80
        fi
        ;;
    2 | 3)
        keep_part "$STEP"
        ;;
    4)
        # Step 4 again, right after one that its time limit stopped, continues the run kept in $GPU/real-run
        # (stages that finished are skipped, dpo resumes from its last checkpoint), with the payload in place.
        if [ ! -f "$GPU/payload/ready" ]; then
            keep_part 4
            (cd "$GPU/parts" && cat part-0 part-1 part-2 > payload.tar.gz && sha256sum --check --quiet SHA256SUMS) \
                || { echo "gpu-session: a part is missing or damaged (were steps 2 and 3 run here?)" >&2; exit 1; }
            rm -rf "$GPU/payload" && mkdir -p "$GPU/payload" && tar -xzf "$GPU/parts/payload.tar.gz" -C "$GPU/payload"
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$GPU/site" \
                "$GPU"/payload/wheels/*.whl || exit 1
            touch "$GPU/payload/ready"
        fi
        python3 -m harness.real_run --rows "$GPU/payload/rows" --workdir "$GPU/real-run" --out "$OUT" ${REAL_RUN_ARGS:-} \
            2>&1 | tee "$OUT/real-run.log" | tail -n 60
        ;;
    5)
        python3 -m harness.gpu_check "${REFERENCE[@]}" ${TINY:-} --out "$OUT" 2>&1 | tee "$OUT/gpu-check.log" | tail -n 40
        ;;
    *)
        echo "gpu-session: no step $STEP (1-5)" >&2
        exit 2
        ;;
esac
