//! key add / list / remove: passphrase rotation without a new stanza (§3.2). The
//! master key never changes, so every backup stays readable; a removed passphrase
//! opens nothing afterwards. Removal runs under the stanza lock, so two removals can
//! never take away the last two slots between them.

use crate::crypto::{KeySlotKdf, Secret};
use crate::error::Result;
use crate::repo::keys::KeySlotInfo;
use crate::repo::lock::StanzaLock;
use crate::repo::Repository;

/// Add a passphrase: a new key slot. Returns its id.
pub async fn key_add(repo: &Repository, new_passphrase: &Secret, kdf: KeySlotKdf) -> Result<String> {
    let id = repo.add_key_slot(new_passphrase, kdf).await?;
    tracing::info!("stanza {}: key slot {id} added", repo.config().stanza);
    Ok(id)
}

/// The key slots, oldest first.
pub async fn key_list(repo: &Repository) -> Result<Vec<KeySlotInfo>> {
    repo.key_slots().await
}

/// Remove key slot `id` (see [`Repository::remove_key_slot`]'s rules).
pub async fn key_remove(repo: &Repository, id: &str, force: bool) -> Result<()> {
    let lock = StanzaLock::acquire(repo, "key-remove").await?;
    let result = repo.remove_key_slot(id, force).await;
    lock.release_after(result).await?;
    tracing::info!("stanza {}: key slot {id} removed", repo.config().stanza);
    Ok(())
}
