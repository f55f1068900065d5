#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs the real
# servers the backend tests need (ZooKeeper, Redis; etcd-server for compare;
# Chromium for the web console) when they are missing,
# then checks formatting, lints the OpenAPI spec (scripts/lint-spec.sh, which
# installs node/npm when missing), vets, and runs every test under the race
# detector.
#
# Set LOCKD_REQUIRE_SERVERS=1 (CI does) to turn a missing server into a test
# failure instead of a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need+=(zookeeper)
command -v redis-server >/dev/null || need+=(redis-server)
command -v java >/dev/null || need+=(default-jre-headless)
# The web console's browser test drives a headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
# compare's external etcd cluster runs real etcd processes.
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need+=(etcd-server)
# deploy's tests: promtool checks the alert rules (systemd-analyze comes
# with systemd where it runs); clients/python's test makes a venv.
command -v promtool >/dev/null || need+=(prometheus)
if command -v python3 >/dev/null && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then need+=(python3-venv); fi
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts redis-server and etcd services on install (where systemd
# runs); the tests start their own on free ports and need none. An etcd
# service this script installed would hold 127.0.0.1:2379, the embedded
# etcd's default port: stop it, so that `go run ./cmd/lockd` works after.
if [[ " ${need[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null; then
	$sudo systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# Likewise the Prometheus server Debian's prometheus package starts: only
# its promtool is needed.
if [[ " ${need[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null; then
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== lint api/openapi.yaml"
./scripts/lint-spec.sh

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 30m "$@" ./...
