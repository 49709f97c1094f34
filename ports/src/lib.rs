//! Relay's ports: the async traits between the application and the outside
//! world (inbound: the collaboration service the WebSocket adapter drives;
//! outbound: operation store, fan-out bus, presence registry, permission
//! source, token verifier, metrics, clock).
//!
//! The traits arrive with the "Serve the protocol" issue; until then this
//! crate only fixes the workspace layout.
