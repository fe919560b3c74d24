//! pgcairn engine: physical backup and restore of PostgreSQL clusters into a
//! content-addressed, compressed and encrypted repository.
//!
//! Public API: [`ops`] (one function per operation), the request/summary types
//! they take and return, [`storage::RepoLocation`] to open a repository's storage,
//! [`repo::Repository`] to open or create a stanza, and [`Error`].
//!
//! Module map: [`pg`] knows PostgreSQL (protocol, tar, versions); [`repo`] knows
//! the repository format; [`crypto`] keys and AEAD; [`storage`] the object-store
//! seam; [`ops`] composes them.

pub mod config;
pub mod crypto;
pub mod error;
pub mod fsutil;
pub mod ops;
pub mod pg;
pub mod progress;
pub mod repo;
pub mod storage;

pub use error::{Error, Result};
