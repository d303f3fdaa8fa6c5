#!/bin/sh
# `npm run build:native`: BPF object + skeleton + exec storm generator (bpf/Makefile), then the addon.
# Run native/setup.sh first on a fresh machine.
set -eu
cd "$(dirname "$0")/.."
make -C bpf
# Node's own headers, so node-gyp needs no download (Debian/NodeSource node ships them).
nodedir=$(node -p "require('node:path').resolve(process.execPath, '..', '..')")
if [ -f "$nodedir/include/node/node_api.h" ]; then
	set -- "--nodedir=$nodedir"
fi
npx --no-install node-gyp rebuild -C native -j 2 "$@"
