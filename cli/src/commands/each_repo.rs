//! Commands that report on every repository of a stanza (info, expire, verify, check
//! --archive-only) when several are configured and `repo-number` chose none: each
//! repository in order under its number and location (json: an array, each element
//! with a `repository` object); one that fails is shown as unreadable and fails the
//! run after all are printed, so an outage of one never hides the others.

use std::future::Future;

use anyhow::Result;
use pgcairn_cli::settings::typed::{Common, RepoSpec};

/// One repository's outcome.
pub(crate) type Outcome<T> = (RepoSpec, Result<T>);

/// `one` run on each of `list` in turn (one at a time: each may derive a key).
pub(crate) async fn run_each<T, F, Fut>(list: Vec<Common>, one: F) -> Vec<Outcome<T>>
where
    F: Fn(Common) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut outcomes = Vec::with_capacity(list.len());
    for common in list {
        let spec = common.selected.clone();
        outcomes.push((spec, one(common).await));
    }
    outcomes
}

/// "repository 2 (s3://bucket/prefix)".
pub(crate) fn heading(spec: &RepoSpec) -> String {
    format!("repository {} ({})", spec.number, spec.repo.describe())
}

/// The json of `outcomes`: each report with its `repository`; a failure as
/// `unreadable(error)` gives it.
pub(crate) fn json_array<T: serde::Serialize>(
    outcomes: &[Outcome<T>],
    unreadable: impl Fn(&anyhow::Error) -> serde_json::Value,
) -> Result<String> {
    let values = outcomes
        .iter()
        .map(|(spec, outcome)| {
            let mut value = match outcome {
                Ok(report) => serde_json::to_value(report)?,
                Err(e) => unreadable(e),
            };
            value["repository"] = serde_json::json!({ "number": spec.number, "location": spec.repo.describe() });
            Ok(value)
        })
        .collect::<serde_json::Result<Vec<_>>>()?;
    Ok(serde_json::to_string_pretty(&values)?)
}

/// The text of `outcomes`: a heading per repository, then `text` of its report or
/// the error that kept it from being read.
pub(crate) fn print_text<T>(outcomes: &[Outcome<T>], text: impl Fn(&T) -> Result<()>) -> Result<()> {
    for (i, (spec, outcome)) in outcomes.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        outln!("{}", heading(spec));
        match outcome {
            Ok(report) => text(report)?,
            Err(e) => outln!("    status: unreadable ({e:#})"),
        }
    }
    Ok(())
}

/// The first failure, if any, taken out of `outcomes` (the run's error).
pub(crate) fn first_error<T>(outcomes: Vec<Outcome<T>>) -> Result<()> {
    match outcomes.into_iter().find_map(|(_, outcome)| outcome.err()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
