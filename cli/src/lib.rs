//! pgcairn's edge, shared by `pgcairn` and `pgcairn-archive-push`: the settings
//! table and its resolution into the typed requests the engine takes.

pub mod logging;
pub mod settings;
