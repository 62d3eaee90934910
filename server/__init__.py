"""modelroute server: gRPC services, admin HTTP, wiring."""
