#!/usr/bin/env bash
# Installs the anchors proxy-bench compares against (Debian packages): wrk, HAProxy, nginx.
set -euo pipefail
missing=()
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
