#!/usr/bin/env bash
# Run the SuperLink in the foreground: TLS, SuperNode authentication, no runtime dependency installation.
# Usage: start-superlink.sh --certs DIR/superlink [--host 0.0.0.0] [--port 8000] [--state-dir /var/lib/fedsim/superlink]
# Runs `fedsim deploy superlink` (set FEDSIM to another command line, e.g. FEDSIM="python -m fedsim.deploy.cli",
# to use a fedsim that is not on PATH). `exec` keeps the PID, so systemd's stop signal reaches fedsim,
# which stops what it started by PID.
set -euo pipefail
if [[ $# -eq 0 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
    read -r -a fedsim <<< "${FEDSIM:-fedsim}"
    exec "${fedsim[@]}" deploy superlink --help
fi
read -r -a fedsim <<< "${FEDSIM:-fedsim}"
exec "${fedsim[@]}" deploy superlink "$@"
