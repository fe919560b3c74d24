//! `pgcairn key add | list | remove`: passphrase rotation. A new passphrase comes
//! from a file (mode 0600) or stdin, never argv.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use pgcairn::{KeySlotKdf, Secret};
use pgcairn_cli::settings::typed::Common;

/// What `pgcairn key` does.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum KeyAction {
    /// Add a passphrase (a new key slot); the current one stays valid until removed.
    Add {
        /// Read the new passphrase from this file (mode 0600; trailing newline ignored).
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
        /// Read the new passphrase from the first line of stdin.
        #[arg(long, conflicts_with = "new_passphrase_file")]
        new_passphrase_stdin: bool,
    },
    /// List the key slots: id, creation time, key derivation costs, which one opened this run.
    List {
        /// text for people, json for scripts.
        #[arg(long, value_enum, default_value = "text")]
        output: crate::Output,
    },
    /// Remove a key slot (never the last; not the one this run's passphrase opened unless --force).
    Remove {
        /// The slot id (`pgcairn key list`).
        slot: String,
        /// Remove it even though this run's passphrase opened it.
        #[arg(long)]
        force: bool,
    },
}

fn new_passphrase(file: &Option<PathBuf>, stdin: bool) -> Result<Secret> {
    let text = match (file, stdin) {
        (Some(f), _) => {
            pgcairn_cli::settings::typed::refuse_shared_secret_file(f)?;
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
        }
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
        (None, false) => bail!("key add needs the new passphrase: --new-passphrase-file=PATH (mode 0600) or --new-passphrase-stdin; never on the command line"),
    };
    let pass = text.trim_end_matches(['\n', '\r']);
    if pass.len() < 12 {
        bail!(
            "the new passphrase has {} characters: use at least 12 (a long random one is best)",
            pass.chars().count()
        );
    }
    Ok(Secret::new(pass))
}

/// Run one `key` action.
pub(crate) async fn run(common: &Common, action: &KeyAction) -> Result<()> {
    let repo = common.access()?.open().await?;
    match action {
        KeyAction::Add { new_passphrase_file, new_passphrase_stdin } => {
            let pass = new_passphrase(new_passphrase_file, *new_passphrase_stdin)?;
            let id = pgcairn::key_add(&repo, &pass, KeySlotKdf::default()).await?;
            outln!("key slot {id} added to stanza {}: the new passphrase opens the repository; remove the old slot with `pgcairn key remove SLOT` once every place that uses it has the new one", common.stanza);
        }
        KeyAction::List { output } => {
            let slots = pgcairn::key_list(&repo).await?;
            if *output == crate::Output::Json {
                outln!("{}", serde_json::to_string_pretty(&slots)?);
                return Ok(());
            }
            for s in &slots {
                let costs = s
                    .kdf_params
                    .map(|k| format!(", m={} KiB t={} p={}", k.m_cost, k.t_cost, k.p_cost))
                    .unwrap_or_default();
                let this = if s.unlocked_this_run { " (opened this run)" } else { "" };
                outln!("{}  created {}  {}{costs}{this}", s.id, s.created, s.kdf);
            }
        }
        KeyAction::Remove { slot, force } => {
            pgcairn::key_remove(&repo, slot, *force).await?;
            outln!(
                "key slot {slot} removed from stanza {}: its passphrase no longer opens the repository",
                common.stanza
            );
        }
    }
    Ok(())
}

/// `pgcairn key-file --output=PATH`: write the selected repository's key file.
pub(crate) async fn write_key_file(common: &Common, output: &Path) -> Result<()> {
    // The config may already name the key file this writes: unlock with the
    // passphrase then (a review found `key-file` failing on its own output).
    let mut unlock_with = common.clone();
    if unlock_with.selected.key_file.as_deref().is_some_and(|k| !k.exists()) {
        unlock_with.selected.key_file = None;
    }
    unlock_with.access()?.open().await?.write_key_file(output)?;
    outln!(
        "key file {} written (mode 0600): give it to the database's OS user and set repo-key-file; anyone who can read it can read every backup",
        output.display()
    );
    Ok(())
}
