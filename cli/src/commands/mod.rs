//! One handler per subcommand: build the typed request, call the engine, print.

pub(crate) mod archive_get;
pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod copy;
pub(crate) mod drill;
pub(crate) mod each_repo;
pub(crate) mod expire;
pub(crate) mod extract;
pub(crate) mod info;
pub(crate) mod restore;
pub(crate) mod stanza;
pub(crate) mod verify;
