#!/usr/bin/env bash
# Makes the pinned npm tools of tools/node (spec linters, the TypeScript
# client generator) ready: installs node and npm with apt when they are
# missing, then `npm ci` from tools/node/package-lock.json. Sourced by the
# scripts that use them; prints nothing when all is in place.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "== installing nodejs npm"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
# npm ci again only when the lock file changed since the last install.
stamp="$root/tools/node/node_modules/.lockd-installed"
if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$root/tools/node/package-lock.json"; then
	echo "== npm ci --prefix tools/node"
	npm ci --prefix "$root/tools/node" --no-audit --no-fund --loglevel=error >/dev/null
	cp "$root/tools/node/package-lock.json" "$stamp"
fi
