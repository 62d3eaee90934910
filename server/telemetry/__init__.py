"""Tracing (OpenTelemetry) and metrics (Prometheus)."""
