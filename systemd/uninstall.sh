#!/usr/bin/env bash
# Stops and removes the ringgate service and binary. The config in /etc/ringgate stays unless
# --purge is given. Run as root: systemd/uninstall.sh [--purge]
set -euo pipefail

[[ $(id -u) -eq 0 ]] || { echo "uninstall.sh: run as root" >&2; exit 1; }

systemctl disable --now ringgate.socket ringgate.service 2>/dev/null || true
rm -f /etc/systemd/system/ringgate.service /etc/systemd/system/ringgate.socket
systemctl daemon-reload 2>/dev/null || true
rm -f /usr/local/bin/ringgate
if [[ ${1:-} == --purge ]]; then
  rm -rf /etc/ringgate
else
  echo "kept /etc/ringgate (remove it with --purge)"
fi
