//! The operator recipes under contrib/ (systemd units, the cron file and its wrapper,
//! the Kubernetes manifests, the Prometheus rules) and the TOML examples of the docs:
//! they parse, they run the installed binaries by absolute path (archive_command, cron
//! and systemd do not have a login shell's PATH), their config keys are real settings,
//! and they do what their READMEs say. No cluster needed.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgcairn_cli::settings::setting;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::TestDir;

/// Where `make install` puts the programs; recipes name them only so.
const BIN: &str = "/usr/local/bin";
/// The programs a recipe may run.
const PROGRAMS: [&str; 3] = ["pgcairn", "pgcairn-archive-push", "pgcairn-cron"];

/// Every metric `pgcairn metrics` exports: alerting rules must not name others.
const METRICS: [&str; 24] = [
    "pgcairn_backup_not_restorable",
    "pgcairn_postgres_up",
    "pgcairn_archiver_failing",
    "pgcairn_archiver_backlog_segments",
    "pgcairn_build_info",
    "pgcairn_up",
    "pgcairn_backup_last_success_timestamp_seconds",
    "pgcairn_backup_last_duration_seconds",
    "pgcairn_backup_last_size_bytes",
    "pgcairn_backup_count",
    "pgcairn_repository_size_bytes",
    "pgcairn_archive_last_segment_timestamp_seconds",
    "pgcairn_archive_lag_seconds",
    "pgcairn_archive_gaps",
    "pgcairn_archiver_failed_total",
    "pgcairn_archiver_archived_total",
    "pgcairn_verify_last_timestamp_seconds",
    "pgcairn_verify_last_ok",
    "pgcairn_drill_last_timestamp_seconds",
    "pgcairn_drill_last_ok",
    "pgcairn_drill_last_success_timestamp_seconds",
    "pgcairn_drill_last_partial",
    "pgcairn_wal_receive_slot_active",
    "pgcairn_wal_receive_slot_lost",
];

fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is cli/.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cli/ has a parent").to_path_buf()
}

fn contrib() -> PathBuf {
    repo_root().join("contrib")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every file below `dir`, sorted, whose name ends in `.EXT` for one of `exts`.
fn files_with_extension(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Checks that every word of `command` naming one of pgcairn's programs names it by
/// its installed absolute path; returns how many it found.
fn assert_invocations_absolute(command: &str, what: &str) -> usize {
    let mut found = 0;
    for word in command.split_whitespace() {
        let word = word.trim_matches(|c: char| matches!(c, '\'' | '"' | ';' | '(' | ')' | '&' | '|'));
        let name = word.rsplit('/').next().unwrap_or(word);
        if PROGRAMS.contains(&name) {
            assert_eq!(word, format!("{BIN}/{name}"), "{what}: {name} not by its installed path in: {command}");
            found += 1;
        }
    }
    found
}

/// Every key of a pgcairn config file is a setting the config file may hold; so is
/// every key of its `[stanza.NAME]` tables.
fn assert_config_keys(table: &toml::Table, what: &str) {
    for (key, value) in table {
        if key == "stanza" {
            if let Some(stanzas) = value.as_table() {
                for (name, settings) in stanzas {
                    let settings = settings.as_table().unwrap_or_else(|| panic!("{what}: [stanza.{name}] is no table"));
                    assert_config_keys(settings, &format!("{what} [stanza.{name}]"));
                }
                continue;
            }
        }
        let s = setting(key).unwrap_or_else(|| panic!("{what}: `{key}` is no pgcairn setting"));
        assert!(s.sources.file, "{what}: `{key}` cannot be set in the config file");
    }
}

// --- TOML in the docs ---------------------------------------------------------------

/// The ```toml blocks of a Markdown text with the line each starts on. A fence may be
/// indented (in a list item); that indentation is removed from the block's lines.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some((start, indent, mut text)) = open.take() {
            if trimmed.starts_with("```") {
                blocks.push((start, text));
            } else {
                let spaces = line.len() - line.trim_start_matches(' ').len();
                text.push_str(&line[spaces.min(indent)..]);
                text.push('\n');
                open = Some((start, indent, text));
            }
        } else if trimmed == "```toml" {
            open = Some((n + 2, line.len() - trimmed.len(), String::new()));
        }
    }
    assert!(open.is_none(), "a ```toml block is never closed");
    blocks
}

/// Every ```toml block of README.md, docs/ and contrib/ is a config file pgcairn
/// accepts: valid TOML, and only keys that are settings the config file may hold.
#[test]
fn toml_examples_in_the_docs_are_valid_config_files() {
    let root = repo_root();
    let mut markdown = vec![root.join("README.md")];
    markdown.extend(files_with_extension(&root.join("docs"), &["md"]));
    markdown.extend(files_with_extension(&contrib(), &["md"]));
    let mut blocks = 0;
    for path in &markdown {
        for (line, text) in toml_blocks(&read(path)) {
            let what = format!("{}:{line}", path.display());
            let table: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{what}: not valid TOML: {e}\n{text}"));
            assert_config_keys(&table, &what);
            blocks += 1;
        }
    }
    // config.md, operations.md and contrib/systemd/README.md have some: finding none
    // means the fences changed, not that everything is fine.
    assert!(blocks >= 4, "only {blocks} ```toml blocks found in {markdown:?}");
}

// --- YAML: Kubernetes and Prometheus -------------------------------------------------

/// The documents of a YAML file (a stream of `---`-separated ones), empty ones left out.
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn yaml_str<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str().unwrap_or_else(|| panic!("{what}: expected a string, found {y:?}"))
}

fn yaml_list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec().unwrap_or_else(|| panic!("{what}: expected a list, found {y:?}"))
}

#[test]
fn every_yaml_file_under_contrib_parses() {
    let files = files_with_extension(&contrib(), &["yml", "yaml"]);
    assert!(files.len() >= 2, "expected the Kubernetes manifests and the Prometheus rules, found {files:?}");
    for path in &files {
        let docs = yaml_documents(path);
        assert!(!docs.is_empty(), "{}: no YAML document", path.display());
        for doc in &docs {
            assert!(doc.as_hash().is_some(), "{}: a document is no mapping: {doc:?}", path.display());
        }
    }
}

fn kubernetes_documents() -> Vec<Yaml> {
    yaml_documents(&contrib().join("kubernetes/cronjob.yaml"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).collect()
}

/// Non-root, bounded, absolute commands, and the passphrase from a Secret that only
/// the pod's user and group can read.
fn assert_pod_is_locked_down(pod: &Yaml, name: &str) {
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"), "{name}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name}");
    assert!(pod["securityContext"]["runAsUser"].as_i64().is_some_and(|u| u > 0), "{name}: runAsUser");
    let containers: Vec<&Yaml> =
        ["initContainers", "containers"].iter().flat_map(|k| pod[*k].as_vec().into_iter().flatten()).collect();
    assert!(!containers.is_empty(), "{name}: no containers");
    for c in containers {
        let what = format!("{name} container {:?}", c["name"]);
        let limits = c["resources"]["limits"].as_hash().unwrap_or_else(|| panic!("{what}: no resources.limits"));
        assert!(limits.contains_key(&Yaml::String("memory".into())), "{what}: no memory limit");
        let command = yaml_list(&c["command"], &format!("{what} command"));
        assert!(yaml_str(&command[0], &what).starts_with('/'), "{what}: command not by absolute path");
    }
    let volumes = yaml_list(&pod["volumes"], &format!("{name} volumes"));
    let secret = volumes.iter().find(|v| v["secret"].as_hash().is_some());
    let secret = secret.unwrap_or_else(|| panic!("{name}: no secret volume"));
    if let Some(mode) = secret["secret"]["defaultMode"].as_i64() {
        assert_eq!(mode & 0o007, 0, "{name}: the secret's files are readable by others (mode {mode:o})");
    }
}

/// The CronJobs of contrib/kubernetes: one per backup type, never two runs of one at a
/// time, a start deadline and a retry bound, limits, and a locked-down pod.
#[test]
fn kubernetes_cronjobs_do_not_overlap_and_are_bounded() {
    let docs = kubernetes_documents();
    let jobs = of_kind(&docs, "CronJob");
    let names: BTreeSet<&str> = jobs.iter().map(|j| yaml_str(&j["metadata"]["name"], "CronJob name")).collect();
    let want: BTreeSet<&str> = ["pgcairn-backup-full", "pgcairn-backup-diff", "pgcairn-backup-incr"].into();
    assert_eq!(names, want);
    for job in jobs {
        let name = yaml_str(&job["metadata"]["name"], "CronJob name");
        let spec = &job["spec"];
        assert!(spec["schedule"].as_str().is_some_and(|s| s.split_whitespace().count() == 5), "{name}: schedule");
        assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"), "{name}");
        assert!(spec["startingDeadlineSeconds"].as_i64().is_some_and(|s| s > 0), "{name}: startingDeadlineSeconds");
        assert!(spec["jobTemplate"]["spec"]["backoffLimit"].as_i64().is_some(), "{name}: backoffLimit");
        assert_pod_is_locked_down(&spec["jobTemplate"]["spec"]["template"]["spec"], name);
    }
}

/// The ConfigMap's pgcairn.toml uses real settings and reads the passphrase from a
/// mounted file; its scripts run pgcairn by absolute path; the Secret holds it.
#[test]
fn kubernetes_config_uses_real_settings_and_paths() {
    let docs = kubernetes_documents();
    let maps = of_kind(&docs, "ConfigMap");
    let data = &maps.first().expect("cronjob.yaml has a ConfigMap")["data"];
    let text = yaml_str(&data["pgcairn.toml"], "ConfigMap pgcairn.toml");
    let config: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("ConfigMap pgcairn.toml: {e}"));
    assert_config_keys(&config, "ConfigMap pgcairn.toml");
    let passphrase = config.get("repo-passphrase-file").and_then(|v| v.as_str()).expect("repo-passphrase-file");
    let passphrase_dir = Path::new(passphrase).parent().unwrap().to_str().unwrap();
    for job in of_kind(&docs, "CronJob") {
        let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let mounts = yaml_list(&pod["containers"][0]["volumeMounts"], "volumeMounts");
        assert!(mounts.iter().any(|m| m["mountPath"].as_str() == Some(passphrase_dir)), "{passphrase_dir} mounted");
    }
    let mut invocations = 0;
    for (key, value) in data.as_hash().expect("ConfigMap data").iter() {
        let key = yaml_str(key, "ConfigMap key");
        if key.ends_with(".sh") {
            for line in yaml_str(value, key).lines().filter(|l| !l.trim_start().starts_with('#')) {
                invocations += assert_invocations_absolute(line, key);
            }
        }
    }
    assert!(invocations > 0, "no ConfigMap script runs {BIN}/pgcairn");
    let holds_passphrase =
        |s: &&Yaml| s["stringData"]["passphrase"].as_str().is_some() || s["data"]["passphrase"].as_str().is_some();
    assert!(of_kind(&docs, "Secret").iter().any(holds_passphrase), "no Secret holds the passphrase");
}

fn prometheus_rules() -> Vec<Yaml> {
    let docs = yaml_documents(&contrib().join("prometheus/pgcairn.rules.yml"));
    assert_eq!(docs.len(), 1, "pgcairn.rules.yml: one document");
    let groups = yaml_list(&docs[0]["groups"], "groups");
    assert!(!groups.is_empty(), "pgcairn.rules.yml: no groups");
    groups.iter().flat_map(|g| yaml_list(&g["rules"], "groups[].rules").iter().cloned()).collect()
}

/// The metric names an expression uses (`pgcairn_...`).
fn pgcairn_metrics_in(expr: &str) -> Vec<&str> {
    expr.match_indices("pgcairn_")
        .map(|(i, _)| {
            let rest = &expr[i..];
            &rest[..rest.find(|c: char| !c.is_ascii_alphanumeric() && c != '_').unwrap_or(rest.len())]
        })
        .collect()
}

/// Every rule is a complete alert on metrics pgcairn exports: alert, expr, for, a
/// severity, a summary and a description.
#[test]
fn prometheus_rules_are_complete_alerts_on_real_metrics() {
    let rules = prometheus_rules();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let alert = yaml_str(&rule["alert"], "rule without alert:");
        assert!(names.insert(alert), "alert {alert} twice");
        let expr = yaml_str(&rule["expr"], alert);
        for metric in pgcairn_metrics_in(expr) {
            assert!(METRICS.contains(&metric), "{alert}: {metric} is no metric of pgcairn");
        }
        let duration = yaml_str(&rule["for"], &format!("{alert} for"));
        assert!(duration.len() >= 2 && duration.ends_with(['s', 'm', 'h', 'd']), "{alert}: for: {duration}");
        let severity = yaml_str(&rule["labels"]["severity"], &format!("{alert} severity"));
        assert!(["critical", "warning"].contains(&severity), "{alert}: severity {severity}");
        for annotation in ["summary", "description"] {
            let text = yaml_str(&rule["annotations"][annotation], &format!("{alert} {annotation}"));
            assert!(!text.trim().is_empty(), "{alert}: empty {annotation}");
        }
    }
}

/// A test on an alert's expression.
type ExprTest = fn(&str) -> bool;

/// The alerts operators need are there, found by what their expressions test.
#[test]
fn prometheus_rules_cover_backups_archiving_and_proofs() {
    let exprs: Vec<String> = prometheus_rules().iter().map(|r| yaml_str(&r["expr"], "expr").to_string()).collect();
    let success = "pgcairn_backup_last_success_timestamp_seconds";
    let required: [(&str, ExprTest); 12] = [
        ("no full backup in 8 days", |e| e.contains("type=\"full\"") && e.contains("8 * 86400")),
        ("no backup of any type in 26 hours", |e| !e.contains("type=") && e.contains("26 * 3600")),
        ("WAL archive lag over 15 minutes", |e| {
            (e.contains("pgcairn_archive_lag_seconds") || e.contains("pgcairn_archive_last_segment_timestamp_seconds"))
                && e.contains("15 * 60")
        }),
        ("archive failures rising", |e| {
            e.contains("increase(pgcairn_archiver_failed_total[10m])") && e.contains("> 0")
        }),
        ("no successful drill in 35 days, or none", |e| {
            e.contains("pgcairn_drill_last_success_timestamp_seconds")
                && e.contains("35 * 86400")
                && (e.contains("unless") || e.contains("absent("))
        }),
        ("verify failed", |e| e.contains("pgcairn_verify_last_ok") && e.contains("== 0")),
        ("repository unreadable", |e| e.contains("pgcairn_up") && e.contains("== 0")),
        // Issue 21, item 11: gaps and unrestorable backups had no rule; a stanza never
        // verified and an archive never written could not fire theirs.
        ("WAL archive gap", |e| e.contains("pgcairn_archive_gaps") && e.contains("> 0")),
        ("unrestorable sets", |e| e.contains("pgcairn_backup_not_restorable") && e.contains("> 0")),
        ("PostgreSQL unreachable", |e| e.contains("pgcairn_postgres_up") && e.contains("== 0")),
        ("never verified", |e| {
            e.contains("pgcairn_verify_last_timestamp_seconds")
                && e.contains("unless on (stanza, repo) pgcairn_verify_last")
        }),
        ("an archive that never received WAL", |e| {
            e.contains("unless on (stanza, repo) pgcairn_archive_last_segment_timestamp_seconds")
        }),
    ];
    for (what, fires_on) in required {
        let found = exprs.iter().any(|e| fires_on(e) && (!what.contains("backup") || e.contains(success)));
        assert!(found, "no alert for {what} in pgcairn.rules.yml");
    }
}

// --- systemd ---------------------------------------------------------------------------

fn unit_files() -> Vec<PathBuf> {
    files_with_extension(&contrib().join("systemd"), &["service", "timer"])
}

/// A unit file's settings as (section, key, value); comments and blank lines left out.
fn unit_entries(path: &Path) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in read(path).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{}: {line}", path.display()));
            entries.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
        }
    }
    entries
}

fn unit_value<'a>(entries: &'a [(String, String, String)], key: &str) -> Option<&'a str> {
    entries.iter().find(|(_, k, _)| k == key).map(|(_, _, v)| v.as_str())
}

/// Every Exec line of every service starts with an absolute path and runs pgcairn by
/// its installed path; returns how many pgcairn invocations there are.
fn assert_exec_lines_absolute(units: &[PathBuf]) -> usize {
    let mut invocations = 0;
    for unit in units.iter().filter(|u| u.extension().is_some_and(|e| e == "service")) {
        let entries = unit_entries(unit);
        let exec: Vec<&str> =
            entries.iter().filter(|(_, k, _)| k.starts_with("Exec")).map(|(_, _, v)| v.as_str()).collect();
        assert!(!exec.is_empty(), "{}: no ExecStart", unit.display());
        for line in exec {
            // Prefixes such as "-" (ignore failure) or "+" (full privileges) come first.
            let program = line.trim_start_matches(['-', '@', '+', '!', ':']);
            assert!(program.starts_with('/'), "{}: not an absolute path: {line}", unit.display());
            invocations += assert_invocations_absolute(line, &unit.display().to_string());
        }
    }
    invocations
}

/// The units run the installed binaries as postgres, one oneshot service per timer
/// plus the metrics server, hardened.
#[test]
fn systemd_units_run_the_installed_binaries_as_postgres() {
    let units = unit_files();
    let names: BTreeSet<String> = units.iter().map(|u| u.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for job in ["backup-full", "backup-diff", "backup-incr", "verify", "drill"] {
        for kind in ["service", "timer"] {
            assert!(names.contains(&format!("pgcairn-{job}.{kind}")), "contrib/systemd lacks pgcairn-{job}.{kind}");
        }
    }
    assert!(names.contains("pgcairn-metrics.service") && names.contains("pgcairn-wal-receive.service"));
    assert!(assert_exec_lines_absolute(&units) >= 6, "not every service runs {BIN}/pgcairn");
    for unit in units.iter().filter(|u| u.extension().is_some_and(|e| e == "service")) {
        let entries = unit_entries(unit);
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(unit_value(&entries, "User"), Some("postgres"), "{name}");
        assert_eq!(unit_value(&entries, "ProtectSystem"), Some("strict"), "{name}");
        assert_eq!(unit_value(&entries, "NoNewPrivileges"), Some("yes"), "{name}");
        let timer = name.replace(".service", ".timer");
        if names.contains(&timer) {
            assert_eq!(unit_value(&entries, "Type"), Some("oneshot"), "{name}");
            let t = unit_entries(&unit.with_file_name(&timer));
            assert!(unit_value(&t, "OnCalendar").is_some() && unit_value(&t, "WantedBy").is_some(), "{timer}");
        } else {
            assert_eq!(unit_value(&entries, "Restart"), Some("on-failure"), "{name}");
        }
    }
}

/// Copies the units into `dir`, the installed pgcairn in their Exec lines replaced by
/// the binary under test (systemd-analyze wants an executable there); returns the
/// copies and how many replacements there were.
fn units_for_verify(units: &[PathBuf], dir: &Path) -> (Vec<PathBuf>, usize) {
    let installed = format!("{BIN}/pgcairn");
    let built = env!("CARGO_BIN_EXE_pgcairn");
    let mut copies = Vec::new();
    let mut replaced = 0;
    for unit in units {
        let mut text = String::new();
        for line in read(unit).lines() {
            match line.split_once('=') {
                Some((key, value)) if key.starts_with("Exec") => {
                    let words: Vec<&str> = value.split(' ').map(|w| if w == installed { built } else { w }).collect();
                    replaced += value.split(' ').filter(|w| *w == installed).count();
                    text.push_str(&format!("{key}={}", words.join(" ")));
                }
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        let copy = dir.join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    (copies, replaced)
}

/// `systemd-analyze verify` accepts every unit. Without systemd-analyze, the Exec lines
/// are still checked (absolute paths, installed binaries).
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = unit_files();
    assert!(units.len() >= 11, "contrib/systemd: {units:?}");
    assert!(assert_exec_lines_absolute(&units) > 0, "no unit runs {BIN}/pgcairn");
    let available = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("systemd-analyze not found: checked the units' Exec lines only");
        return;
    }
    let dir = TestDir::new("recipes-systemd");
    let (copies, replaced) = units_for_verify(&units, dir.path());
    assert!(replaced >= 6, "only {replaced} Exec lines run {BIN}/pgcairn");
    // --man=no: Documentation=man:pgcairn(1) exists only once `make install` ran.
    let out = Command::new("systemd-analyze").arg("verify").arg("--man=no").args(&copies).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings (exit 0): any message about our units fails too.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("pgcairn")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify ({}):\n{stderr}", out.status);
}

// --- cron ----------------------------------------------------------------------------

/// /etc/cron.d/pgcairn: SHELL and PATH set, every job runs as postgres through
/// pgcairn-cron, with every program by its installed path.
#[test]
fn cron_file_runs_the_installed_binaries_as_postgres() {
    let text = read(&contrib().join("cron/pgcairn"));
    let mut env = Vec::new();
    let mut commands = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0].contains('=') {
            env.push(line.split_once('=').unwrap());
            continue;
        }
        assert!(fields.len() > 6, "not a cron.d job line: {line}");
        let time_ok = fields[..5].iter().all(|f| f.chars().all(|c| c.is_ascii_digit() || "*,-/".contains(c)));
        assert!(time_ok, "bad time fields: {line}");
        assert_eq!(fields[5], "postgres", "user field: {line}");
        assert_eq!(fields[6], format!("{BIN}/pgcairn-cron"), "not through pgcairn-cron: {line}");
        assert!(assert_invocations_absolute(&fields[6..].join(" "), "contrib/cron/pgcairn") >= 2, "{line}");
        commands.push(fields[6..].join(" "));
    }
    assert!(env.contains(&("SHELL", "/bin/sh")), "SHELL: {env:?}");
    let path = env.iter().find(|(k, _)| *k == "PATH").map(|(_, v)| *v).expect("PATH set");
    assert!(path.split(':').any(|p| p == BIN), "PATH: {path}");
    for job in ["backup --type=full", "backup --type=diff", "backup --type=incr", "pgcairn verify", "pgcairn drill"] {
        assert!(commands.iter().any(|c| c.contains(job)), "no cron job runs {job}");
    }
}

/// Runs contrib/cron/pgcairn-cron with `sh`, temporary files in `tmp`.
fn pgcairn_cron(tmp: &Path, args: &[&str]) -> Output {
    Command::new("sh").arg(contrib().join("cron/pgcairn-cron")).args(args).env("TMPDIR", tmp).output().unwrap()
}

/// pgcairn-cron prints nothing and exits 0 when the command succeeds (cron sends no
/// mail), and prints the command's output and exits with its status when it fails.
#[test]
fn pgcairn_cron_is_quiet_unless_the_command_fails() {
    let path = contrib().join("cron/pgcairn-cron");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_ne!(mode & 0o111, 0, "{} is not executable", path.display());
    let tmp = TestDir::new("recipes-cron");
    for ok in [&["true"][..], &["sh", "-c", "echo out; echo err >&2"][..]] {
        let out = pgcairn_cron(tmp.path(), ok);
        assert_eq!(out.status.code(), Some(0), "{ok:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{ok:?} printed: {out:?}");
    }
    let out = pgcairn_cron(tmp.path(), &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("out") && stdout.contains("err") && stdout.contains("status 3"), "{stdout}");
    let out = pgcairn_cron(tmp.path(), &["/nonexistent/pgcairn-recipes-test"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(!out.stdout.is_empty(), "a command that cannot run says so");
    let out = pgcairn_cron(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "no command is a usage error");
    // The captured output never outlives the run.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<Vec<String>> {
    let text = read(&contrib().join("kubernetes/Dockerfile"));
    let joined = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    joined
        .replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// No Docker here, so the image is not built; what breaks a build most — a path the
/// build stage needs but does not copy, a binary the final stage copies under another
/// name — is checked: the build stage's COPY sources alone, in an empty directory,
/// make a workspace cargo resolves (--locked, offline), whose packages named by
/// `cargo build -p` have exactly the binaries the final stage copies.
#[test]
fn dockerfile_build_stage_has_what_cargo_needs() {
    let instructions = dockerfile_instructions();
    let context = TestDir::new("docker-context");
    let (mut packages, mut copied_bins) = (BTreeSet::new(), BTreeSet::new());
    for words in &instructions {
        match (words[0].as_str(), words.get(1).map(String::as_str)) {
            ("COPY", Some(from)) if from.starts_with("--from=") => {
                for src in &words[2..words.len() - 1] {
                    copied_bins.insert(src.rsplit('/').next().unwrap().to_string());
                }
            }
            ("COPY", _) => {
                for src in &words[1..words.len() - 1] {
                    let status =
                        Command::new("cp").arg("-a").arg(repo_root().join(src)).arg(context.path()).status().unwrap();
                    assert!(status.success(), "COPY {src}: not in the repository");
                }
            }
            ("RUN", _) if words.contains(&"cargo".to_string()) => {
                packages.extend(words.windows(2).filter(|w| w[0] == "-p").map(|w| w[1].clone()));
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir_all(context.path().join("target"));
    // This platform only: a fresh CI machine has fetched no other platform's crates.
    let host = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    let host = host.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").to_string();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["metadata", "--locked", "--format-version=1", "--filter-platform", &host])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the build stage's context is not a workspace cargo resolves: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins = BTreeSet::new();
    for package in
        meta["packages"].as_array().unwrap().iter().filter(|p| packages.contains(p["name"].as_str().unwrap()))
    {
        for target in package["targets"].as_array().unwrap() {
            if target["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.insert(target["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(packages.len(), 2, "cargo build -p …: {packages:?}");
    assert_eq!(bins, copied_bins, "binaries built vs copied into the image");
    assert_eq!(copied_bins, BTreeSet::from(["pgcairn".to_string(), "pgcairn-archive-push".to_string()]));
    let ignore = read(&contrib().join("kubernetes/Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target"), "the build context would carry target/");
}
