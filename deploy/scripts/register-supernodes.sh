#!/usr/bin/env bash
# Register the SuperNodes' public keys (supernodes/*/node.pub) with a running SuperLink.
# Usage: register-supernodes.sh --certs DIR [--superlink HOST:PORT] [--key NAME=FILE.pub ...]
# Runs `fedsim deploy register` (set FEDSIM to another command line, e.g. FEDSIM="python -m fedsim.deploy.cli",
# to use a fedsim that is not on PATH). `exec` keeps the PID, so systemd's stop signal reaches fedsim,
# which stops what it started by PID.
set -euo pipefail
if [[ $# -eq 0 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
    read -r -a fedsim <<< "${FEDSIM:-fedsim}"
    exec "${fedsim[@]}" deploy register --help
fi
read -r -a fedsim <<< "${FEDSIM:-fedsim}"
exec "${fedsim[@]}" deploy register "$@"
