//! Contract test suites, one per outbound port, written once and run
//! against every adapter (in-memory, PostgreSQL, Redis...). Each suite is a
//! set of async functions taking a factory for a fresh adapter.
