"""The compiled build: the per-call path as C extensions, built by mypyc from the same
typed sources. scripts/build_backend.py asks for it (`_SIDECAR_MYPYC=1`) when it builds a
wheel (`pip install .`, `pip wheel .`, the container image); editable installs and
SIDECAR_COMPILE=0 stay pure Python. Measured: daemon CPU per proxied call 132 -> 97 us
(median of 4 interleaved rounds, bench/ab_daemons.py; bench/README.md has the figures).

A Python class cannot subclass a compiled one: a module whose classes do is compiled
too. Left out on purpose: the CLI, config loading and what runs once at start (no gain),
and resilience/breaker_listener.py (pybreaker calls its listener with **kwargs, which
mypyc's compiled method mishandles: SystemError in dictobject.c).
"""

import os

from setuptools import setup

COMPILED = [
    "sidecar/admission.py",
    "sidecar/context.py",
    "sidecar/routing.py",
    "sidecar/runtime.py",
    "sidecar/engine/client.py",
    "sidecar/engine/connection.py",
    "sidecar/engine/control.py",
    "sidecar/engine/dns.py",
    "sidecar/engine/endpoints.py",
    "sidecar/engine/errors.py",
    "sidecar/engine/events.py",
    "sidecar/engine/frames.py",
    "sidecar/engine/header_blocks.py",
    "sidecar/engine/headers.py",
    "sidecar/engine/hpack.py",
    "sidecar/engine/inbound.py",
    "sidecar/engine/lifecycle.py",
    "sidecar/engine/limits.py",
    "sidecar/engine/peer.py",
    "sidecar/engine/pool.py",
    "sidecar/engine/ratelimit.py",
    "sidecar/engine/server.py",
    "sidecar/engine/status_block.py",
    "sidecar/engine/streams.py",
    "sidecar/engine/tls.py",
    "sidecar/engine/transport.py",
    "sidecar/resilience/backoff.py",
    "sidecar/resilience/breaker.py",
    "sidecar/resilience/budget.py",
    "sidecar/resilience/policy.py",
    "sidecar/resilience/rate_limit.py",
    "sidecar/services/api_call.py",
    "sidecar/services/call.py",
    "sidecar/services/frame_proxy.py",
    "sidecar/services/health.py",  # subclasses native_stream's Session: compiled with it
    "sidecar/services/http_proxy.py",
    "sidecar/services/message_bound.py",
    "sidecar/services/native.py",
    "sidecar/services/native_stream.py",
    "sidecar/services/publisher.py",
    "sidecar/services/reflection.py",  # the same
    "sidecar/telemetry/histogram.py",
    "sidecar/telemetry/hub.py",
    "sidecar/telemetry/logging.py",
    "sidecar/telemetry/semconv.py",
    "sidecar/upstreams/grpc.py",
    "sidecar/upstreams/http.py",
    "sidecar/upstreams/http1.py",
    "sidecar/upstreams/kafka.py",
    "sidecar/upstreams/kafka_messages.py",
]

if os.environ.get("_SIDECAR_MYPYC") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(COMPILED, opt_level="3"))
else:
    setup()
