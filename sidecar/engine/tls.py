"""TLS for upstream connections of the frame engine: an ssl context with ALPN `h2`.

Built once per target from its `tls` keys; certificate checks stay on (a grpc target
refuses `insecure_skip_verify` at config load), `server_name` is the SNI and the name
verified, and `cert_file` with `key_file` is mutual TLS.
"""

from __future__ import annotations

import ssl
from typing import Any

from sidecar.config import Tls

ALPN = "h2"


def client_context(tls: Tls) -> ssl.SSLContext:
    """A client context verifying the server (with `ca_file`, else the system roots)."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9113 section 9.2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols([ALPN])
    return context


def negotiated(transport: Any) -> str | None:
    """The ALPN protocol the TLS peer chose, "" for none, None on a plain transport."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.selected_alpn_protocol() or ""
