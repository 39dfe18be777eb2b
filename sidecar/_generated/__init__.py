"""The generated code's old, private import path; the code lives in `sidecar.v1`."""

from __future__ import annotations

from sidecar.v1 import sidecar_pb2 as sidecar_pb2
from sidecar.v1 import sidecar_pb2_grpc as sidecar_pb2_grpc
