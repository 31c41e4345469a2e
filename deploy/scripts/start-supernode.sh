#!/usr/bin/env bash
# Run one authenticated SuperNode in the foreground (TLS, node key, partition id and node-local data path).
# Usage: start-supernode.sh --node-dir DIR/supernodes/NODE --data-dir /srv/data [--port 9094] [--state-dir /var/lib/fedsim/NODE] [--isolation process|subprocess] [--poll-interval 0.1]
# Default --isolation process: one long-lived ClientApp worker next to the node serves every message over the
# node's local runtime API (--port) and is stopped by PID with it; subprocess: Flower's process per message.
# Runs `fedsim deploy supernode` (set FEDSIM to another command line, e.g. FEDSIM="python -m fedsim.deploy.cli",
# to use a fedsim that is not on PATH). `exec` keeps the PID, so systemd's stop signal reaches fedsim,
# which stops what it started by PID.
set -euo pipefail
if [[ $# -eq 0 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    read -r -a fedsim <<< "${FEDSIM:-fedsim}"
    exec "${fedsim[@]}" deploy supernode --help
fi
read -r -a fedsim <<< "${FEDSIM:-fedsim}"
exec "${fedsim[@]}" deploy supernode "$@"
