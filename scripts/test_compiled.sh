#!/usr/bin/env bash
# Tests against the compiled build: a copy of the checkout's tracked files with the
# extensions of WHEEL (a wheel built by `pip wheel --no-deps .`, setup.py's modules
# compiled by mypyc) beside their sources, so tests and the daemons they start import the
# compiled modules. With no test paths: the per-call tests (engine, proxy, native API,
# Kafka, HTTP, telemetry on the hot path) and tests/test_build.py, which checks that the
# compiled modules are the ones loaded.
#   scripts/test_compiled.sh dist/sidecar-*.whl [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
wheel="$(realpath "${1:?usage: scripts/test_compiled.sh WHEEL [pytest args...]}")"
shift
work="$(mktemp -d /tmp/sc-compiled-XXXXXX)"
trap 'rm -rf "$work"' EXIT
(cd "$root" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$work"
"$root/.venv/bin/python" - "$wheel" "$work" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    extensions = [n for n in wheel.namelist() if n.endswith(".so")]
    if not extensions:
        sys.exit(f"{sys.argv[1]} is a pure-Python wheel: nothing compiled to test")
    wheel.extractall(sys.argv[2], extensions)
print(f"testing {len(extensions)} compiled extensions from {sys.argv[1]}")
EOF
if [ "$#" -eq 0 ]; then
  set -- tests/test_build.py tests/engine tests/test_native_unit.py tests/test_native.py \
    tests/test_native_streams.py tests/test_proxy.py tests/test_resilience.py \
    tests/test_upstream_grpc.py tests/test_kafka.py tests/test_kafka_batch.py \
    tests/test_kafka_wakeup.py tests/test_kafka_poller.py tests/test_http.py \
    tests/test_http1_client.py tests/test_http_correctness.py tests/test_access_line.py \
    tests/test_call_scope.py tests/test_lifecycle.py tests/test_logging.py \
    tests/test_resilience_units.py tests/test_metrics_semconv.py
fi
cd "$work"
SIDECAR_EXPECT_COMPILED=1 "$root/.venv/bin/pytest" -q -p no:cacheprovider "$@"
