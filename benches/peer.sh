#!/bin/sh
# Runs `vigil bench` against the FastAPI + onnxruntime peer of ../shared/peers on this box:
# starts the peer on 127.0.0.1 with a temporary database, passes its address and pid (so its
# CPU per request is measured too), and stops it afterwards. Extra arguments reach vigil bench.
#
#   cargo build --release -p vigil-cli
#   benches/peer.sh --out bench-report            # add --quick for the one-minute version
#
# Environment: VIGIL (the binary; default $CARGO_TARGET_DIR/release/vigil or target/release/vigil),
# PEER_VENV (default ../.venv-peer: python3 -m venv ../.venv-peer &&
# ../.venv-peer/bin/pip install -r ../shared/peers/fastapi_onnx/requirements.txt), PEER_PORT (8002).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
vigil=${VIGIL:-${CARGO_TARGET_DIR:-$root/target}/release/vigil}
venv=${PEER_VENV:-$root/../.venv-peer}
port=${PEER_PORT:-8002}
peers=$root/../shared/peers
db=$(mktemp -d)
[ -x "$venv/bin/uvicorn" ] || { echo "no peer: $venv/bin/uvicorn is missing" >&2; exit 2; }
AE_ONNX=$peers/model/ae_ref.onnx AE_DB=$db/peer.db "$venv/bin/uvicorn" --app-dir "$peers/fastapi_onnx" \
    server:app --host 127.0.0.1 --port "$port" --no-access-log --log-level warning &
peer=$!
trap 'kill $peer 2>/dev/null; wait $peer 2>/dev/null; rm -rf "$db"' EXIT INT TERM
tries=0
until "$vigil" healthcheck --url "http://127.0.0.1:$port" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ $tries -lt 300 ] || { echo "the peer did not answer /healthz within 30 s" >&2; exit 1; }
    sleep 0.1
done
"$vigil" bench --peer "http://127.0.0.1:$port" --peer-pid "$peer" "$@"
