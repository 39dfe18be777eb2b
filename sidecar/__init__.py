"""sidecar: a local daemon that makes an application's outbound gRPC, HTTP and Kafka calls."""

__version__ = "0.1.0"


def build() -> str:
    """`compiled` when the per-call path runs as mypyc extensions (a wheel built by
    scripts/build_backend.py), `python` when it runs from source (editable installs,
    SIDECAR_COMPILE=0)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from sidecar.engine import connection

    return "compiled" if connection.__file__.endswith(tuple(EXTENSION_SUFFIXES)) else "python"
