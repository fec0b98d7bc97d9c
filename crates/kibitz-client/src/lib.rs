//! The Kibitz room protocol as a deterministic, sans-IO engine.
//!
//! Not implemented yet: this crate is a placeholder in the workspace layout and exports
//! nothing. The room engine (election, roster, presence, migration, grants) lands here.
