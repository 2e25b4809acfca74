#!/usr/bin/env bash
# Debian packages the tests need: promtool (package `prometheus`) for the alert rules and /metrics.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "promtool is missing: install the Debian package 'prometheus' (sudo apt-get install prometheus)" >&2
  exit 1
fi
echo "system-tools: installing promtool (Debian package prometheus)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends prometheus >&2 \
  || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends prometheus >&2; }
# The package starts a Prometheus server on :9090 where systemd runs; the tests only need promtool.
command -v promtool >/dev/null
