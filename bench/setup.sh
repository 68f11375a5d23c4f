#!/usr/bin/env bash
# Installs the anchors the benches compare against (Debian packages): wrk, HAProxy, nginx
# (proxy-bench); dnsperf, unbound (dns-bench).
set -euo pipefail
missing=()
for tool in wrk haproxy nginx dnsperf unbound; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
