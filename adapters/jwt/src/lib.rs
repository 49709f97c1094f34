//! JWT.
//!
//! - [`keys`] - [`KeySet`], the usable keys of a JWKS document by `kid`, the
//!   algorithm of each decided by the key;
//! - [`verifier`] - [`JwtVerifier`], the `TokenVerifier` port over a
//!   replaceable key set;
//! - [`dev`] - [`DevKeys`], the Ed25519 development signing key, its JWKS and
//!   token minting;
//! - `testing` (feature `testing`) - a JWKS endpoint the tests control and
//!   `DevKeys::editor_token`.

pub mod dev;
pub mod jwks;
pub mod keys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verifier;

pub use dev::{DevKeyError, DevKeys, KeyFileRefusal, TokenRequest};
#[cfg(unix)]
pub use dev::{check_private_file, write_private_key_file};
pub use jwks::{JwksConfig, JwksError, JwksVerifier};
pub use keys::{KeySet, KeySetError, SkippedKey, VerificationKey};
pub use verifier::{JwtConfig, JwtVerifier};
