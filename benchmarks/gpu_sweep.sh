#!/usr/bin/env bash
# The evidence tables at their gpu preset, in about 10 minutes on one H100, no network.
#
#   bash benchmarks/gpu_sweep.sh                 # writes docs/results/gpu/*.md|json|png
#   OUT=/some/dir bash benchmarks/gpu_sweep.sh
#
# Each script runs under its own time limit (seconds below, ~560 s in all) so one slow table
# cannot starve the rest; a table that fails or runs out is named at the end and the others
# still land. Training is time-capped per arm (the gpu presets set seconds, not steps), so the
# reports' `steps` columns say how much work each arm got.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! python -c "import memplug.plugins.retrievers.jittered" 2>/dev/null; then
  # install the checkout without touching the network (torch etc. are already there)
  python -m pip install --no-deps --no-build-isolation --no-index -q -e . || {
    echo "memplug could not be installed offline here; stopping" >&2; exit 2; }
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

failed=()
run() {  # run LIMIT_SECONDS NAME ARGS...
  local limit=$1 name=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  if ! timeout "$limit" python "$@" --preset gpu --device auto --out "$OUT" --name "$name"; then
    failed+=("$name")
  fi
  echo "== $name took $((SECONDS - start)) s"
}

# the synthetic tasks train on their scored tokens (--train-on scored): on the CPU, 1000 steps on
# every token left every model at the regime task's answer marginal (an earlier version of the task)
run 180 tasks_regime  benchmarks/tasks_suite.py --task regime --train-on scored               # 10 arms x 15 s
run 80  tasks_passkey benchmarks/tasks_suite.py --task passkey --train-on scored --memories none,xl,knn,full,elastic
run 80  swaps         benchmarks/swaps.py --train-on scored                                   # 3 arms x 15 s
run 110 ablations     benchmarks/ablations.py --train-on scored                               # 16 arms x 6 s
run 60  lm_sweep      benchmarks/lm_sweep.py --corpora code --memories none,knn,melodi,elastic --scales 1x,16x --seeds 0,1
run 60  length        benchmarks/length.py --tokens 1048576

echo "tables in $OUT"
if ((${#failed[@]})); then echo "failed or out of time: ${failed[*]}" >&2; exit 1; fi
