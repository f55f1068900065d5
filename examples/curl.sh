#!/bin/sh
# lockd from the shell with nothing but curl: acquire a lock, renew it, do
# work with its fencing token, release it.
#
#   LOCKD_ADDR=127.0.0.1:7070 examples/curl.sh [KEY]
#
# Set KV_URL (e.g. http://127.0.0.1:7071/kv/report, served by
# examples/kvstore) to write to a fenced resource as the "work".
# The tests in examples/ run this script against a real lockd.
set -eu

addr=${LOCKD_ADDR:-127.0.0.1:7070}
case $addr in http://*|https://*) base=$addr ;; *) base=http://$addr ;; esac
key=${1:-reports:nightly}

# call METHOD PATH [JSON]: prints the body, then the HTTP status on its own line.
call() {
	if [ $# -ge 3 ]; then
		curl -sS -X "$1" "$base$2" -H 'Content-Type: application/json' -d "$3" -w '\n%{http_code}'
	else
		curl -sS -X "$1" "$base$2" -w '\n%{http_code}'
	fi
}
status() { printf '%s\n' "$1" | tail -n 1; }
body() { printf '%s\n' "$1" | sed '$d'; }
field() { # field NAME JSON: a string or number field of a flat JSON object
	printf '%s' "$2" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p"
}

# 1. Acquire: 10 s lease, wait up to 10 s for the lock.
#    Our own deadline starts NOW, before the request is sent.
r=$(call POST "/v1/locks/$key/acquire" '{"ttl_ms": 10000, "wait_ms": 10000, "owner": "curl.sh"}')
if [ "$(status "$r")" != 200 ]; then
	echo "acquire failed: $(status "$r") $(body "$r")" >&2
	exit 1
fi
lease_id=$(field lease_id "$(body "$r")")
token=$(field token "$(body "$r")")
echo "acquired $key token=$token"

# 2. Work, passing the token to the protected resource.
if [ -n "${KV_URL:-}" ]; then
	code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT "$KV_URL" \
		-H "Lock-Key: $key" -H "Lock-Token: $token" --data "written by curl.sh with token $token")
	echo "wrote $KV_URL: $code"
	[ "$code" = 204 ] || exit 1
fi

# 3. Renew before the lease runs out (long jobs do this every ttl/3).
r=$(call POST "/v1/locks/$key/renew" "{\"lease_id\": \"$lease_id\", \"ttl_ms\": 10000}")
if [ "$(status "$r")" != 200 ]; then
	echo "renew failed: $(status "$r") $(body "$r") - stop working, the lock is gone" >&2
	exit 1
fi
echo "renewed $key token=$(field token "$(body "$r")")"

# 4. Inspect, then release.
r=$(call GET "/v1/locks/$key")
echo "status: $(body "$r")"
r=$(call POST "/v1/locks/$key/release" "{\"lease_id\": \"$lease_id\"}")
if [ "$(status "$r")" != 204 ]; then
	echo "release failed: $(status "$r") $(body "$r")" >&2
	exit 1
fi
echo "released $key"
