//! `pgcairn stanza-create` and `pgcairn stanza-delete`.

use anyhow::{bail, Result};
use pgcairn::Error;
use pgcairn::KeySlotKdf;
use pgcairn_cli::settings::typed::{self, Common};
use pgcairn_cli::settings::Resolved;

use crate::output;

pub(crate) async fn stanza_create(
    r: &Resolved,
    common: &Common,
    no_encryption: bool,
    block_size: Option<u32>,
) -> Result<()> {
    let settings = typed::StanzaCreate::from(r)?;
    common.selected.repo.check_creatable()?;
    let passphrase = common.passphrase()?;
    if !no_encryption && passphrase.is_none() {
        bail!("an encrypted repository needs a passphrase: set PGCAIRN_REPO_PASSPHRASE or repo-passphrase-file (or pass --no-encryption to store data unencrypted)");
    }
    let req = pgcairn::StanzaCreateRequest {
        stanza: common.stanza.clone(),
        pg: settings.pg,
        encrypted: !no_encryption,
        passphrase,
        block_size,
        kdf: KeySlotKdf::default(),
    };
    let done = pgcairn::stanza_create(common.storage()?, &req).await?;
    let repo = done.repo;
    if !done.created {
        outln!(
            "stanza {} already exists in {} for this cluster (system identifier {}): nothing changed",
            common.stanza,
            repo.location(),
            repo.config().system_identifier
        );
        return Ok(());
    }
    outln!(
        "stanza {} created in {} (system identifier {}, {})",
        common.stanza,
        repo.location(),
        repo.config().system_identifier,
        if no_encryption { "unencrypted" } else { "encrypted" }
    );
    Ok(())
}

pub(crate) async fn stanza_delete(r: &Resolved, common: &Common, force: bool) -> Result<()> {
    let settings = typed::StanzaDelete::from(r)?;
    let req = pgcairn::StanzaDeleteRequest { force, pg: settings.pg, spool_path: settings.spool_path };
    let report = match common.access()?.open().await {
        Ok(repo) => pgcairn::stanza_delete(&repo, &req).await?,
        // A stanza-delete that stopped after removing the config: finish it.
        Err(Error::RepoNotInitialised { .. }) if force => {
            pgcairn::stanza_delete_leftovers(common.storage()?, &common.stanza).await?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(w) = &report.still_archiving {
        eprintln!("warning: {w}");
    }
    outln!(
        "stanza {} deleted: {} objects, {}",
        common.stanza,
        report.deleted_objects,
        output::human(report.deleted_bytes)
    );
    Ok(())
}
