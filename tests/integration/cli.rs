//! Runs the built `pgcairn` binary with a clean, explicit environment.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::S3Server;

pub const PASSPHRASE: &str = "integration test passphrase";

#[derive(Clone)]
pub struct Pgcairn {
    /// Passed as --stanza (even empty), unless `all_stanzas` is set.
    pub stanza: String,
    /// Pass no --stanza at all (`--all-stanzas` runs).
    pub all_stanzas: bool,
    pub repo: String,
    pub env: Vec<(String, String)>,
}

impl Pgcairn {
    /// Test clusters do not archive unless a test sets that up (archive.rs does, and
    /// drops PGCAIRN_ARCHIVE_COPY): their backups carry their WAL, which backup
    /// refuses unless archive-copy says so (issue 14).
    pub fn local(repo_dir: &Path) -> Self {
        Self {
            stanza: "main".into(),
            all_stanzas: false,
            repo: repo_dir.display().to_string(),
            env: vec![passphrase_env(), archive_copy_env()],
        }
    }

    pub fn s3(s3: &S3Server, prefix: &str) -> Self {
        let mut env: Vec<(String, String)> = s3.aws_env().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        env.push(passphrase_env());
        env.push(archive_copy_env());
        Self { stanza: "main".into(), all_stanzas: false, repo: format!("s3://{}/{prefix}", s3.bucket()), env }
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn without_env(mut self, k: &str) -> Self {
        self.env.retain(|(key, _)| key != k);
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgcairn"));
        // Nothing from the developer's environment may leak into a test (the key cache
        // path is the harness's own: support::test_root).
        for (k, _) in std::env::vars() {
            let ours = k == "PGCAIRN_KEY_CACHE_PATH";
            if !ours && (k.starts_with("PGCAIRN_") || k.starts_with("PG") || k.starts_with("AWS_")) {
                c.env_remove(k);
            }
        }
        // No config file unless the test names one (never the machine's /etc/pgcairn).
        c.env("PGCAIRN_CONFIG", "");
        if !self.all_stanzas {
            c.arg(format!("--stanza={}", self.stanza));
        }
        if !self.repo.is_empty() {
            c.arg(format!("--repo={}", self.repo));
        }
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run pgcairn")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pgcairn {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and expects failure; returns (exit code, stderr).
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "pgcairn {args:?} succeeded but should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `backup` and the label it printed last.
    pub fn backup(&self, pg: &str) -> String {
        let out = self.ok(&["backup", "--start-fast", &format!("--pg={pg}")]);
        out.lines().last().expect("backup prints its label").trim().to_string()
    }
}

fn archive_copy_env() -> (String, String) {
    ("PGCAIRN_ARCHIVE_COPY".into(), "true".into())
}

pub fn passphrase_env() -> (String, String) {
    ("PGCAIRN_REPO_PASSPHRASE".into(), PASSPHRASE.into())
}

/// Wait until a restored cluster has finished recovery (or fail with its log).
pub fn wait_promoted(c: &crate::support::Cluster) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while c.psql("SELECT pg_is_in_recovery()") == "t" {
        assert!(std::time::Instant::now() < deadline, "still in recovery after 90s:\n{}", c.server_log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether `needle` occurs in any file below `dir`.
pub fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() && tree_contains(&p, needle) {
            return true;
        }
        if ft.is_file() {
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}
