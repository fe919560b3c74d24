//! `--all-stanzas` (info, metrics): every stanza the repository holds, each with the
//! settings it would get from `--stanza=NAME` (so each config file section applies).

use anyhow::Result;
use pgcairn::Error;
use pgcairn_cli::settings::typed::Common;
use pgcairn_cli::settings::{process_env, resolve, setting, Cmd, Flags, Resolved};

/// The command line, kept to resolve it again once per stanza.
#[derive(Clone)]
pub(crate) struct AllStanzas {
    cmd: Cmd,
    flags: Flags,
    /// Top-level settings: where the repository is.
    common: Common,
}

impl AllStanzas {
    pub(crate) fn new(cmd: Cmd, flags: Flags, common: Common) -> Self {
        AllStanzas { cmd, flags, common }
    }

    /// The stanzas in the repository, sorted; none is an error that says what to do.
    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        let names = self.common.repo.list_stanzas(&self.common.s3).await?;
        if names.is_empty() {
            let problem = format!("repository {} holds no stanza", self.common.repo.describe());
            return Err(Error::setting(problem, "check repo (and the S3 settings), or run stanza-create").into());
        }
        Ok(names)
    }

    /// `stanza`'s settings: the command line with --stanza=NAME, resolved again.
    pub(crate) fn settings(&self, stanza: &str) -> Result<(Resolved, Common)> {
        let known = setting("stanza").ok_or_else(|| Error::Internal("no setting stanza".into()))?;
        let mut flags = self.flags.clone();
        flags.push((known, stanza.to_string()));
        let r = resolve(self.cmd, &flags, &process_env)?;
        let common = Common::from(&r)?;
        Ok((r, common))
    }
}
