//! `/api/signal` broker selection and the room-link service.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout and exports
//! nothing, so `kibitz serve` does not mount `/api/signal` yet.
