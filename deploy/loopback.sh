#!/usr/bin/env bash
# Loopback rehearsal of a hospital deployment, all on 127.0.0.1:
#   1. fesf-server certs makes a CA, the SuperLink certificate and keys for sites A and B;
#   2. fesf-server run starts the SuperLink with TLS and SuperNode authentication,
#      registers both keys and submits a two-round FESF run;
#   3. two fesf-client processes (sites A and B, each with its own FESF_HOME) build
#      their phantom surrogates and join;
#   4. the run summary is checked, and every process started here is stopped.
# Exit status 0 only if the run finished with both sites and two rounds.
#
# Usage: deploy/loopback.sh [WORK_DIR]   (default: a new temporary folder; kept on failure)
# Needs fesf-server and fesf-client on PATH (make loopback sets that up).
set -euo pipefail

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_USAGE_STATS_ENABLED=0
ROUNDS=2
SITES=(A B)
KEEP=${1:+yes}  # a folder the user named is kept
WORK=${1:-$(mktemp -d -t fesf-loopback.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
CLIENTS=()

stop_all() {
    local status=$?
    # fesf-server and fesf-client stop their own Flower processes on SIGTERM.
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $status -ne 0 ]]; then
        echo "loopback: FAILED (status $status); logs and files kept in $WORK" >&2
        for log in "$WORK"/*.log; do echo "--- $log (last lines)" >&2; tail -n 15 "$log" >&2 || true; done
    elif [[ -z $KEEP ]]; then
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

for command in fesf-server fesf-client; do
    command -v "$command" >/dev/null || { echo "loopback: $command not on PATH; run make loopback" >&2; exit 2; }
done
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "loopback: keys"
FESF_HOME="$WORK/server-home" fesf-server certs --out "$WORK/pki" --host 127.0.0.1 \
    $(printf -- '--site %s ' "${SITES[@]}") >"$WORK/certs.log"

echo "loopback: SuperLink on 127.0.0.1:$PORT (TLS, SuperNode authentication), $ROUNDS rounds"
FESF_HOME="$WORK/server-home" fesf-server run --certificates "$WORK/pki/server" \
    --address "127.0.0.1:$PORT" --run-config "num-server-rounds=$ROUNDS local-epochs=1 round-timeout=300" \
    >"$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")

seed=0
for site in "${SITES[@]}"; do
    seed=$((seed + 1))
    # A small phantom dataset per site, so the rehearsal takes minutes on two cores.
    cat >"$WORK/site-$site.yaml" <<EOF
site: $site
data: {source: phantom, image_size: 32, phantom_per_class: 20, seed: $seed}
hosts: {source: phantom, phantom_count: 4}
iqem: {steps: 5}
EOF
    echo "loopback: site $site joins"
    FESF_HOME="$WORK/site-$site-home" FLWR_HOME="$WORK/site-$site-flwr" fesf-client --site "$site" --superlink "127.0.0.1:$PORT" \
        --config "$WORK/site-$site.yaml" --root-certificates "$WORK/pki/sites/$site/ca.crt" \
        --auth-key "$WORK/pki/sites/$site/auth.key" --quiet >"$WORK/client-$site.log" 2>&1 &
    PIDS+=("$!")
    CLIENTS+=("$!")
done

# A site that dies would leave the server waiting for it: fail at once instead.
while kill -0 "$SERVER" 2>/dev/null; do
    for pid in "${CLIENTS[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "loopback: a site's fesf-client (pid $pid) exited early" >&2; exit 1; }
    done
    sleep 2
done
wait "$SERVER" || { echo "loopback: fesf-server failed" >&2; exit 1; }
grep "Run finished" "$WORK/server.log"

summary=$(ls "$WORK"/server-home/runs/*/summary.json)
python3 - "$summary" "$ROUNDS" "${SITES[@]}" <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
rounds, sites = int(sys.argv[2]), set(sys.argv[3:])
problems = []
if summary["status"] != "finished":
    problems.append(f"status {summary['status']!r}")
if [entry["round"] for entry in summary["history"]] != list(range(1, rounds + 1)):
    problems.append(f"rounds {[entry['round'] for entry in summary['history']]}")
if set(summary["final"]["sites"]) != sites:
    problems.append(f"sites {sorted(summary['final']['sites'])}")
if problems:
    sys.exit(f"loopback: run summary {sys.argv[1]}: " + "; ".join(problems))
print(f"loopback: run finished: {rounds} rounds with sites {', '.join(sorted(sites))}; accuracy {summary['final']['accuracy']:.3f}")
EOF

# A site's SuperNode is a service: it waits for the next run until told to stop.
for pid in "${CLIENTS[@]}"; do kill -TERM "$pid"; done
for pid in "${CLIENTS[@]}"; do
    wait "$pid" || { echo "loopback: fesf-client (pid $pid) did not stop cleanly on SIGTERM" >&2; exit 1; }
done
echo "loopback: OK"
