"""Logs, health reporting and the admin endpoint: what operators see."""
