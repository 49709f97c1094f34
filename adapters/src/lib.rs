//! Relay's adapters: one module per technology, each implementing ports
//! (warp WebSockets, diesel-async PostgreSQL, Redis, JWKS, OpenTelemetry,
//! in-memory). They arrive with the issues that need them.
