#!/usr/bin/env bash
# InfLLM benchmarks (issue "InfLLM attention"): passkey accuracy far past
# the training context, decode speed against context length, block memory.
# Long: a 128K-token prefill takes tens of minutes on 2 cores.
#
#   bench/infllm.sh [quick|full]   (quick: 32K only; full: 32K, 64K, 128K)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
bin=target/release/infllm
cargo build --release --quiet
models/fetch smollm2 >/dev/null
T="${THREADS:-2}"

run() { echo "+ infllm passkey $*" >&2; "$bin" passkey -t "$T" "$@" 2>&1 | grep -E '^passkey:|memory:'; }

echo "## passkey, defaults (SmolLM2-135M, trained 8K); prefixes shared between positions"
run --share-prefix --tokens 32768 --pos 0.05,0.15,0.25,0.35,0.45,0.55,0.65,0.75,0.85,0.95
if [ "$mode" = full ]; then
  run --share-prefix --tokens 65536 --pos 0.1,0.3,0.5,0.7,0.9
  run --share-prefix --tokens 131072 --pos 0.1,0.5,0.9
fi
echo "## full attention at 16K, for contrast"
run --share-prefix --attn full --tokens 16384 --pos 0.1,0.5,0.9

# Speed and memory through `infllm bench` (no llama.cpp: its 128K prefill
# would take hours; its KV size is computed in docs/perf.md instead).
# Its stderr stays visible: progress rows, and any error.
bench() { echo "+ infllm bench $*" >&2; "$bin" bench -t "$T" -p 0 -n 128 --no-ref -o md "$@" | grep '^|'; }
long=$([ "$mode" = full ] && echo 131072 || echo 32768)

echo "## decode tokens/s against context length (tg128, defaults)"
bench -r 3 -d "4096,32768$([ "$mode" = full ] && echo ,131072)"

echo "## peak RSS and block memory at the longest length, q4_0 blocks (q8_0: the row above)"
bench -r 2 -d "$long" -ctk q4_0 -ctv q4_0
