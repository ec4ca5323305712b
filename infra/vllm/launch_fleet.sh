#!/usr/bin/env bash
# Start one vLLM replica per GPU on this host, write the endpoints file workers
# read (resources.llm.<name>.endpoints_file, re-read on change), and stop the
# replicas by PID on Ctrl-C / SIGTERM.
#
#   infra/vllm/launch_fleet.sh MODEL [NUM_GPUS] [ENDPOINTS_FILE]
#   env: BASE_PORT (8000), HOST_NAME (how workers reach this host; default
#        hostname -f), MAX_NUM_SEQS (256), VLLM_BIN (vllm), VLLM_EXTRA_ARGS,
#        READY_TIMEOUT_S (900), LOG_DIR (./vllm-logs)
#
# Untested on real GPUs in this repository's CI; the logic is plain bash.
set -euo pipefail

MODEL=${1:?usage: launch_fleet.sh MODEL [NUM_GPUS] [ENDPOINTS_FILE]}
NUM_GPUS=${2:-$(nvidia-smi -L | wc -l)}
ENDPOINTS_FILE=${3:-endpoints.txt}
BASE_PORT=${BASE_PORT:-8000}
HOST_NAME=${HOST_NAME:-$(hostname -f)}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
VLLM_BIN=${VLLM_BIN:-vllm}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-900}
LOG_DIR=${LOG_DIR:-vllm-logs}
mkdir -p "$LOG_DIR"

pids=()

write_endpoints() {  # atomically: workers must never read half a file
    local tmp="$ENDPOINTS_FILE.tmp.$$"
    printf '# written by launch_fleet.sh on %s\n' "$(date -Is)" >"$tmp"
    printf '%s\n' "$@" >>"$tmp"
    mv -f "$tmp" "$ENDPOINTS_FILE"
}

stop_all() {
    trap - INT TERM EXIT
    echo "stopping ${#pids[@]} replica(s)" >&2
    write_endpoints  # empty first: workers stop sending new requests here
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM EXIT

for ((gpu = 0; gpu < NUM_GPUS; gpu++)); do
    port=$((BASE_PORT + gpu))
    CUDA_VISIBLE_DEVICES=$gpu "$VLLM_BIN" serve "$MODEL" --host 0.0.0.0 --port "$port" \
        --max-num-seqs "$MAX_NUM_SEQS" --disable-log-requests ${VLLM_EXTRA_ARGS:-} \
        >"$LOG_DIR/vllm-$gpu.log" 2>&1 &
    pids+=("$!")
    echo "GPU $gpu: pid $! port $port log $LOG_DIR/vllm-$gpu.log" >&2
done

# Publish each replica as soon as it is healthy (the file is re-read by workers).
ready=()
deadline=$((SECONDS + READY_TIMEOUT_S))
while ((${#ready[@]} < NUM_GPUS && SECONDS < deadline)); do
    for ((gpu = 0; gpu < NUM_GPUS; gpu++)); do
        url="http://$HOST_NAME:$((BASE_PORT + gpu))/v1"
        [[ " ${ready[*]-} " == *" $url "* ]] && continue
        if ! kill -0 "${pids[$gpu]}" 2>/dev/null; then
            echo "GPU $gpu: vllm exited; see $LOG_DIR/vllm-$gpu.log" >&2
            exit 1
        fi
        if curl -fsS -o /dev/null "http://127.0.0.1:$((BASE_PORT + gpu))/health"; then
            ready+=("$url")
            write_endpoints "${ready[@]}"
            echo "GPU $gpu: ready at $url" >&2
        fi
    done
    sleep 5
done
((${#ready[@]} == NUM_GPUS)) || echo "only ${#ready[@]}/$NUM_GPUS replicas ready" >&2
echo "endpoints in $ENDPOINTS_FILE; Ctrl-C stops the fleet" >&2
wait -n "${pids[@]}" || true
echo "a replica exited; stopping the others" >&2
