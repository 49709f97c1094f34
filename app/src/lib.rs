//! Relay's application layer (sessions, per-document rooms, the submit loop)
//! and the `relay` binary's composition root. They arrive with the "Serve
//! the protocol" issue.
