#!/usr/bin/env bash
# Installs ringgate as a systemd service: the release binary to /usr/local/bin, the default
# config to /etc/ringgate/ringgate.toml (an existing one is kept), the unit, then enables and
# starts it. Run from the repository root as root: systemd/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root" >&2; exit 1; }

cargo build --release
install -m 0755 target/release/ringgate /usr/local/bin/ringgate
install -d -m 0755 /etc/ringgate
if [[ -e /etc/ringgate/ringgate.toml ]]; then
  echo "keeping the existing /etc/ringgate/ringgate.toml"
else
  install -m 0644 config/ringgate.toml /etc/ringgate/ringgate.toml
fi
/usr/local/bin/ringgate check --config /etc/ringgate/ringgate.toml
install -m 0644 systemd/ringgate.service /etc/systemd/system/ringgate.service
install -m 0644 systemd/ringgate.socket /etc/systemd/system/ringgate.socket
systemctl daemon-reload
systemctl enable --now ringgate.service
systemctl --no-pager status ringgate.service
