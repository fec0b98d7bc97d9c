//! `/api/turn`: short-lived HMAC TURN credentials for coturn's `use-auth-secret`.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout and exports
//! nothing, so `kibitz serve` does not mount `/api/turn` yet.
