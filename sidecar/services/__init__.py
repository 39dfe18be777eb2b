"""What each listener serves: the transparent proxy, health, the sidecar.v1 API."""
