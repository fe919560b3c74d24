//! Settings: one declarative table ([`table::SETTINGS`]), resolved once at start-up
//! from flags, PGCAIRN_* variables and the config file ([`resolve()`]) into typed
//! per-command settings ([`typed`]) and engine requests. See docs/config.md.

pub mod args;
pub mod file;
pub mod kind;
pub mod resolve;
pub mod table;
pub mod typed;

#[cfg(test)]
mod tests;

pub use resolve::{process_env, resolve, resolve_top_level, Flags, Resolved, Source};
pub use table::{setting, Cmd, Setting, SETTINGS};
