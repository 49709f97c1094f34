//! End-to-end tests of Relay: real WebSocket clients against the real
//! application on port 0. They arrive with the "Serve the protocol" issue.
