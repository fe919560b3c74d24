//! Text from the command line, the environment and the config file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = pgcairn::ConnParams::resolve_with(text, &|_| None);
    let _ = pgcairn::RepoLocation::parse(text);
    let _ = pgcairn_cli::settings::file::ConfigFile::parse(text, std::path::Path::new("fuzz.toml"));
    for s in pgcairn_cli::settings::SETTINGS {
        let _ = pgcairn_cli::settings::kind::parse(s.kind, text);
    }
    let _ = text.parse::<pgcairn::Lsn>();
    let _ = pgcairn::check_stanza_name(text);
    let _ = pgcairn::testing::check_key("get", text, false);
});
