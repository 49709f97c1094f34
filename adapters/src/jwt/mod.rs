//! JWT.
