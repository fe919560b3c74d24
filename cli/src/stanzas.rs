//! `--all-stanzas` (info, metrics): every stanza of one repository, each with the
//! settings it would get from `--stanza=NAME` (so each config file section applies).

use anyhow::Result;
use pgcairn::Error;
use pgcairn_cli::settings::file::ConfigFile;
use pgcairn_cli::settings::typed::Common;
use pgcairn_cli::settings::{process_env, resolve, setting, Cmd, Flags, Resolved};

/// The command line, kept to resolve it again once per stanza.
pub(crate) struct AllStanzas {
    cmd: Cmd,
    flags: Flags,
    /// Top-level settings: which repository.
    common: Common,
    /// Stanzas with a section in the config file.
    configured: Vec<String>,
}

impl AllStanzas {
    pub(crate) fn new(cmd: Cmd, flags: Flags, top: &Resolved, common: Common) -> Result<Self> {
        let configured = match top.config_file() {
            Some(path) => ConfigFile::load(Some(path))?.stanza_names(),
            None => Vec::new(),
        };
        Ok(AllStanzas { cmd, flags, common, configured })
    }

    /// The stanzas the repository holds, and those the config file sets up for it
    /// (one missing from the repository is then reported, not left out); sorted.
    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        let mut names = self.common.selected.repo.list_stanzas(&self.common.selected.cloud).await?;
        for name in &self.configured {
            // A section for a stanza of another repository is not this run's.
            if !names.contains(name) && self.settings(name).is_ok() {
                names.push(name.clone());
            }
        }
        names.sort();
        if names.is_empty() {
            let problem = format!("repository {} holds no stanza", self.common.selected.repo.describe());
            return Err(Error::setting(problem, "check repo (and its cloud settings), or run stanza-create").into());
        }
        Ok(names)
    }

    /// `stanza`'s settings: the command line with --stanza=NAME, resolved again. A
    /// section that names another repository is an error: this run reads one.
    pub(crate) fn settings(&self, stanza: &str) -> Result<(Resolved, Common)> {
        let known = setting("stanza").ok_or_else(|| Error::Internal("no setting stanza".into()))?;
        let mut flags = self.flags.clone();
        flags.push((known, stanza.to_string()));
        let r = resolve(self.cmd, &flags, &process_env)?;
        let common = Common::from(&r)?;
        let endpoints = |c: &Common| {
            let cloud = &c.selected.cloud;
            (
                c.selected.repo.clone(),
                cloud.s3.endpoint.clone(),
                cloud.azure.endpoint.clone(),
                cloud.azure.account.clone(),
                cloud.gcs.endpoint.clone(),
            )
        };
        if endpoints(&common) != endpoints(&self.common) {
            let problem = format!(
                "stanza {stanza}: its config section names repository {}, not {}",
                common.selected.repo.describe(),
                self.common.selected.repo.describe()
            );
            return Err(Error::setting(
                problem,
                format!("run --all-stanzas with --repo={} for that one", common.selected.repo.describe()),
            )
            .into());
        }
        Ok((r, common))
    }
}
