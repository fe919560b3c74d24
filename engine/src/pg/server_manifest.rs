//! PostgreSQL's `backup_manifest` (the server's own, kept byte for byte in the
//! repository): one file's entry rewritten for a restore that changed that file.
//!
//! The format is JSON laid out one file per line; its last line is
//! `"Manifest-Checksum": "<sha256 hex>"}`, the SHA-256 of every byte before that
//! line. Each file line names its `Checksum-Algorithm` (CRC32C unless the backup
//! asked for another); pg_verifybackup checks sizes and checksums against the disk.
//!
//! Regression (issue 21, item 18): a restore with `--tablespace-map` writes a
//! tablespace_map naming the new directories, and pg_verifybackup refused the
//! restored cluster ("tablespace_map has size 28 on disk but size 26 in the
//! manifest"). The entry now describes the file restore wrote, and the manifest's
//! own checksum is computed again, as pg_basebackup's plain format leaves a
//! directory that verifies.

use sha2::Digest;

use crate::error::{Error, Result};

const CHECKSUM_LINE: &str = "\"Manifest-Checksum\": \"";

/// `manifest` with the entry of `path` (relative to the data directory) describing
/// `content` instead; unchanged when it has no such entry or already matches.
pub(crate) fn with_file(manifest: &[u8], path: &str, content: &[u8]) -> Result<Vec<u8>> {
    let bad = |detail: &str| Error::Corrupt { what: "the backup's backup_manifest".into(), detail: detail.into() };
    let text = std::str::from_utf8(manifest).map_err(|_| bad("not UTF-8"))?;
    let end = text.rfind(CHECKSUM_LINE).ok_or_else(|| bad("no Manifest-Checksum line"))?;
    let (body, _) = text.split_at(end);
    let needle = format!("\"Path\": {}", serde_json::Value::from(path));
    let mut lines: Vec<String> = body.split_inclusive('\n').map(str::to_string).collect();
    let Some(line) = lines.iter_mut().find(|l| l.contains(&needle)) else {
        return Ok(manifest.to_vec());
    };
    let trailer = &line[line.rfind('}').ok_or_else(|| bad("a file line without '}'"))? + 1..];
    let (json, trailer) = (&line[..line.len() - trailer.len()], trailer.to_string());
    let mut entry: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json.trim_start_matches(['\n', ' '])).map_err(|_| bad("a file line is not JSON"))?;
    let algorithm = entry.get("Checksum-Algorithm").and_then(|v| v.as_str()).unwrap_or("NONE").to_string();
    entry.insert("Size".into(), content.len().into());
    if let Some(sum) = checksum(&algorithm, content) {
        entry.insert("Checksum".into(), sum.into());
    }
    *line = format!("{}{trailer}", render(&entry));
    let body: String = lines.concat();
    let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    Ok(format!("{body}{CHECKSUM_LINE}{sum}\"}}\n").into_bytes())
}

/// An entry as PostgreSQL writes it: `{ "Key": value, ... }` in its own key order.
fn render(entry: &serde_json::Map<String, serde_json::Value>) -> String {
    let order = ["Path", "Encoded-Path", "Size", "Last-Modified", "Checksum-Algorithm", "Checksum"];
    let mut fields: Vec<String> = order.iter().filter_map(|k| entry.get(*k).map(|v| format!("\"{k}\": {v}"))).collect();
    fields.extend(entry.iter().filter(|(k, _)| !order.contains(&k.as_str())).map(|(k, v)| format!("\"{k}\": {v}")));
    format!("{{ {} }}", fields.join(", "))
}

fn checksum(algorithm: &str, content: &[u8]) -> Option<String> {
    match algorithm {
        // PostgreSQL copies the pg_crc32c out in host byte order.
        "CRC32C" => Some(hex::encode(crc32c::crc32c(content).to_ne_bytes())),
        "SHA224" => Some(hex::encode(sha2::Sha224::digest(content))),
        "SHA256" => Some(hex::encode(sha2::Sha256::digest(content))),
        "SHA384" => Some(hex::encode(sha2::Sha384::digest(content))),
        "SHA512" => Some(hex::encode(sha2::Sha512::digest(content))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &str) -> Vec<u8> {
        let body = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }}\n],\n");
        let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    #[test]
    fn the_entry_and_the_manifest_checksum_follow_the_new_content() {
        let old = b"16384 /old/ts\n";
        let line = |content: &[u8]| {
            format!(
                "{{ \"Path\": \"tablespace_map\", \"Size\": {}, \"Last-Modified\": \"2026-12-06 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                content.len(),
                hex::encode(crc32c::crc32c(content).to_ne_bytes())
            )
        };
        let files = format!("{{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-06 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }},\n{}\n", line(old));
        let before = manifest(&files);
        let new = b"16384 /somewhere/else\n";
        let after = with_file(&before, "tablespace_map", new).unwrap();
        let want_files = format!("{{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-12-06 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }},\n{}\n", line(new));
        assert_eq!(String::from_utf8(after).unwrap(), String::from_utf8(manifest(&want_files)).unwrap());
        assert_eq!(with_file(&before, "tablespace_map", old).unwrap(), before, "unchanged content, same bytes");
        assert_eq!(with_file(&before, "nope", new).unwrap(), before);
        assert!(with_file(b"{}", "tablespace_map", new).is_err());
    }
}
