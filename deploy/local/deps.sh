#!/usr/bin/env bash
# Install the Debian 12 packages cangrejo needs, only those missing (idempotent, quiet).
#
#   deploy/local/deps.sh          build and runtime packages
#   deploy/local/deps.sh --test   also what the test suites, fuzzers and benchmarks need
#
# The postgresql and redis-server packages may start system services (a cluster on 5432, a
# redis on 6379) when installed. We never use them: deploy/local/stack.sh runs its own
# PostgreSQL and Redis on other loopback ports, so whether those services run does not matter
# and this script leaves them alone.
set -euo pipefail

build_pkgs=(build-essential meson ninja-build pkg-config libmicrohttpd-dev libpq-dev
    libhiredis-dev libjansson-dev libssl-dev libjwt-dev zlib1g-dev postgresql postgresql-contrib
    redis-server tzdata ca-certificates curl python3 python3-yaml)
test_pkgs=(python3-pytest python3-requests python3-jwt python3-psycopg2 python3-redis
    python3-hypothesis python3-cryptography python3-jsonschema clang libclang-rt-14-dev wrk bc nginx-light
    testssl.sh sqlmap prometheus yamllint chromium iproute2)

want=("${build_pkgs[@]}")
for arg in "$@"; do
    case "$arg" in
    --test) want+=("${test_pkgs[@]}") ;;
    -h | --help)
        sed -n '2,10s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *)
        echo "deps.sh: unknown argument '$arg' (use --test or nothing)" >&2
        exit 2
        ;;
    esac
done

missing=()
for pkg in "${want[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
        missing+=("$pkg")
    fi
done
# npm ships with nodejs from some third-party repositories (and conflicts with Debian's npm
# there), and kubectl (for `kubectl kustomize`, offline) may come from another repository too:
# only ask apt for Debian's packages when the command is not on PATH.
if [[ " ${want[*]} " == *" yamllint "* ]]; then
    command -v npm >/dev/null || missing+=(npm)
    command -v kubectl >/dev/null || missing+=(kubernetes-client)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps.sh: must run as root (or have sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi

echo "deps.sh: installing ${missing[*]}"
log=$(mktemp /tmp/cangrejo-deps.XXXXXX.log)
if ! { "${sudo[@]}" apt-get update -q &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"; } >"$log" 2>&1; then
    echo "deps.sh: apt-get failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi
rm -f "$log"
