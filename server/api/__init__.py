"""The edges clients talk to: gRPC services, admin HTTP and dashboard, auth, TLS, errors."""
