//! Commands about pgcairn itself: version, shell completions, the man page. They
//! need no stanza and no repository.

use std::io::Write;

use anyhow::Result;
use clap_complete::Shell;

/// `pgcairn version`: the program, the repository format it writes and reads.
pub(crate) fn version() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "pgcairn {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(
        out,
        "repository format: {} (reads {} to {})",
        pgcairn::FORMAT_VERSION,
        pgcairn::OLDEST_READABLE_FORMAT,
        pgcairn::FORMAT_VERSION
    )?;
    writeln!(out, "archive_command helper: pgcairn-archive-push {}", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// `pgcairn completions SHELL`: the completion script, generated from the parser.
pub(crate) fn completions(shell: Shell, mut cmd: clap::Command) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pgcairn", &mut buf);
    std::io::stdout().lock().write_all(&buf)?;
    Ok(())
}

/// `pgcairn man`: the roff page pgcairn(1) on stdout; with a directory, pgcairn.1 and
/// one pgcairn-COMMAND.1 per subcommand written there.
pub(crate) fn man(cmd: clap::Command, dir: Option<&std::path::Path>) -> Result<()> {
    if let Some(dir) = dir {
        clap_mangen::generate_to(cmd, dir)?;
        return Ok(());
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    std::io::stdout().lock().write_all(&buf)?;
    Ok(())
}
