#!/usr/bin/env bash
# Lints api/openapi.yaml (or the spec given as $1) with the two linters users run on it, at pinned
# versions: @redocly/cli (recommended rules) and @stoplight/spectral-cli
# (spectral:oas). Both must report 0 errors and 0 warnings. Run it after
# every change to the spec; ./scripts/test.sh runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-tools.sh
spec=${1:-api/openapi.yaml}
bin=tools/node/node_modules/.bin
fail=0

echo "== redocly lint $spec"
if ! out=$("$bin/redocly" lint --config api/redocly.yaml --format=stylish "$spec" 2>&1); then
	fail=1
fi
if grep -qE '^\s+[0-9]+:[0-9]+\s+(error|warning)' <<<"$out" || [ $fail -ne 0 ]; then
	echo "$out"
	fail=1
fi

echo "== spectral lint $spec"
if ! "$bin/spectral" lint --ruleset api/.spectral.yaml --fail-severity=warn --display-only-failures "$spec"; then
	fail=1
fi

if [ $fail -ne 0 ]; then
	echo "lint-spec: $spec has lint problems (above)"
	exit 1
fi
echo "lint-spec: 0 errors, 0 warnings"
