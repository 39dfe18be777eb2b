"""sidecar: a local daemon that makes an application's outbound gRPC, HTTP and Kafka calls."""

__version__ = "0.1.0"
