//! Relay's adapters: one module per technology, each implementing ports.
//! A technology's types never cross a port.
//!
//! # Layout
//!
//! - [`memory`]: in-memory adapters for every outbound port (each says how
//!   far it can be trusted).
//! - [`otel`]: metrics on OpenTelemetry, exported to Prometheus (`/metrics`
//!   on METRICS_PORT) and over OTLP, and the OTLP span exporter.
//! - [`jwt`]: token verification with jsonwebtoken against a JWK set, and
//!   the development signing key that `relay` creates when no JWKS URL is
//!   configured.
//! - [`postgres`]: the operation store and permission source on
//!   diesel-async, the pool, and the embedded migrations.
//! - [`redis`]: the fan-out bus on Redis pub/sub and the presence registry,
//!   shared by the instances of a deployment.
//! - [`ws`]: the warp WebSocket transport driving the collaboration service.

pub mod jwt;
pub mod memory;
pub mod otel;
pub mod postgres;
pub mod redis;
pub mod ws;
