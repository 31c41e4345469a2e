#!/usr/bin/env bash
# Create a federation directory: CA, SuperLink TLS certificate (SANs = the hosts given), SuperNode key pairs.
# Usage: init-federation.sh DIR --superlink-host HOST [--san HOST ...] [--port 8000] [--nodes N]
# Runs `fedsim deploy init` (set FEDSIM to another command line, e.g. FEDSIM="python -m fedsim.deploy.cli",
# to use a fedsim that is not on PATH). `exec` keeps the PID, so systemd's stop signal reaches fedsim,
# which stops what it started by PID.
set -euo pipefail
if [[ $# -eq 0 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
    read -r -a fedsim <<< "${FEDSIM:-fedsim}"
    exec "${fedsim[@]}" deploy init --help
fi
read -r -a fedsim <<< "${FEDSIM:-fedsim}"
exec "${fedsim[@]}" deploy init "$@"
