//! On-disk types of the repository format (version `FORMAT_VERSION`). `docs/repository-format.md` is the
//! normative description; keep the two in step.

use serde::{Deserialize, Serialize};

/// The repository format this pgcairn writes (repository-format.md §10).
pub const FORMAT_VERSION: u32 = 7;
/// The oldest format it still reads: version 6 only added the manifest's
/// `databases`, which a version 5 backup lacks (restore then knows databases by OID).
pub const OLDEST_READABLE_FORMAT: u32 = 5;

/// Whether this build reads objects written in format `found`.
pub(crate) fn readable_format(found: u64) -> bool {
    (OLDEST_READABLE_FORMAT as u64..=FORMAT_VERSION as u64).contains(&found)
}

pub(crate) const CONFIG_KEY: &str = "config";

pub(crate) const KEYS_PREFIX: &str = "keys/";
pub(crate) const DATA_PREFIX: &str = "data/";
pub(crate) const INDEX_PREFIX: &str = "index/";
pub(crate) const BACKUP_PREFIX: &str = "backup/";
pub(crate) const WAL_PREFIX: &str = "wal/";
/// Verify and drill results (§6.8).
pub(crate) const RESULT_PREFIX: &str = "result/";
/// First bytes of every WAL object.
pub(crate) const WAL_MAGIC: &[u8; 8] = b"PGCWAL01";

/// First bytes of every pack.
pub(crate) const PACK_MAGIC: &[u8; 8] = b"PGCPACK1";
pub(crate) const PACK_KEY_ID_LEN: usize = 16;
pub(crate) const PACK_HEADER_LEN: usize = PACK_MAGIC.len() + PACK_KEY_ID_LEN;

/// HKDF `info` strings for purpose keys.
pub(crate) const INFO_CHUNK_ID: &[u8] = b"pgcairn chunk-id v1";
pub(crate) const INFO_METADATA: &[u8] = b"pgcairn metadata v1";
pub(crate) const INFO_WAL: &[u8] = b"pgcairn wal v1";
pub(crate) const INFO_KEY_CHECK: &[u8] = b"pgcairn key-check v1";
pub(crate) const INFO_CONFIG_MAC: &[u8] = b"pgcairn config-mac v1";
pub(crate) const INFO_DATA_PREFIX: &[u8] = b"pgcairn data v1:";
/// Associated-data prefixes.
pub(crate) const AAD_KEYSLOT_PREFIX: &str = "pgcairn keyslot v1:";
pub(crate) const AAD_METADATA_PREFIX: &str = "pgcairn metadata v1:";

pub(crate) fn pack_key(pack_id: &str) -> String {
    format!("{DATA_PREFIX}{}/{pack_id}", &pack_id[..2])
}
pub(crate) fn index_key(index_id: &str) -> String {
    format!("{INDEX_PREFIX}{index_id}")
}
/// Stanza names: 1–64 characters of `[A-Za-z0-9._-]`, starting with a letter or
/// digit (repository-format.md §2). A stanza is a directory or key prefix: anything
/// else could address storage outside the repository.
pub fn check_stanza_name(name: &str) -> crate::Result<()> {
    check_name(name, 64, b"._-").map_err(|why| {
        crate::Error::setting(
            format!("stanza name {name:?} {why}"),
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    })
}

/// Backup labels: 1–80 characters of `[A-Za-z0-9_-]`, starting with a letter or digit
/// (pgcairn writes `YYYYMMDD-HHMMSSF` and `<full>_YYYYMMDD-HHMMSSD|I`).
pub(crate) fn check_label(label: &str) -> crate::Result<()> {
    check_name(label, 80, b"_-").map_err(|why| {
        crate::Error::setting(
            format!("backup label {label:?} {why}"),
            "labels look like 20260101-120000F; `pgcairn info` lists them",
        )
    })
}

fn check_name(name: &str, max: usize, punct: &[u8]) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > max {
        return Err("has the wrong length");
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return Err("does not start with a letter or digit");
    }
    if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || punct.contains(b)) {
        return Err("holds a character that is not allowed");
    }
    Ok(())
}

/// The moment a backup label was taken (`YYYYMMDD-HHMMSS`): the part before its type
/// letter. Full labels are `<ts>F`, diff and incr labels `<full label>_<ts>D|I`.
pub(crate) fn label_timestamp(label: &str) -> &str {
    let end = label.len().saturating_sub(1);
    label.get(end.saturating_sub(15)..end).unwrap_or(label)
}
pub(crate) fn manifest_key(label: &str) -> String {
    format!("{BACKUP_PREFIX}{label}/manifest")
}
/// The first object a backup writes (§6.7): a killed backup's label is found by it.
pub(crate) fn started_key(label: &str) -> String {
    format!("{BACKUP_PREFIX}{label}/started")
}
pub(crate) fn summary_key(label: &str) -> String {
    format!("{BACKUP_PREFIX}{label}/summary")
}
pub(crate) fn server_manifest_key(label: &str) -> String {
    format!("{BACKUP_PREFIX}{label}/backup_manifest")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    #[serde(rename = "none")]
    None,
}

/// `config`: plaintext JSON; its existence means the stanza is initialised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format_version: u32,
    pub repository_id: String,
    pub created: String,
    pub stanza: String,
    pub encryption: Encryption,
    /// Always "blake3-keyed" in v1.
    pub chunk_id: String,
    /// Always "zstd" in v1.
    pub compression: String,
    pub block_size: u32,
    pub pack_size: u64,
    pub system_identifier: u64,
    /// server_version_num of the cluster at stanza-create (e.g. 170004).
    pub pg_version: u32,
    /// The cluster's WAL segment size in bytes.
    pub wal_segment_size: u32,
    /// Hex of keyed BLAKE3(key-check key, repository_id): proves a key file's key
    /// belongs to this repository without fetching another object.
    pub key_check: String,
    /// Hex of keyed BLAKE3(config-mac key, [`RepoConfig::mac_input`]): binds every
    /// other field to the master key, so an edit (say, encryption turned off) is
    /// refused before anything is written or trusted.
    #[serde(default)]
    pub config_mac: String,
}

impl RepoConfig {
    /// The bytes `config_mac` covers: every other field as `name=<JSON value>\n`, in
    /// the order of repository-format.md §3.1.
    pub fn mac_input(&self) -> String {
        let text = |s: &str| serde_json::Value::from(s).to_string();
        let encryption = match self.encryption {
            Encryption::Aes256Gcm => "aes-256-gcm",
            Encryption::None => "none",
        };
        let fields: [(&str, String); 13] = [
            ("format_version", self.format_version.to_string()),
            ("repository_id", text(&self.repository_id)),
            ("created", text(&self.created)),
            ("stanza", text(&self.stanza)),
            ("encryption", text(encryption)),
            ("chunk_id", text(&self.chunk_id)),
            ("compression", text(&self.compression)),
            ("block_size", self.block_size.to_string()),
            ("pack_size", self.pack_size.to_string()),
            ("system_identifier", self.system_identifier.to_string()),
            ("pg_version", self.pg_version.to_string()),
            ("wal_segment_size", self.wal_segment_size.to_string()),
            ("key_check", text(&self.key_check)),
        ];
        fields.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// `keys/<slot-id>`: plaintext JSON wrapping the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeySlot {
    /// "argon2id", or "none" for an unencrypted repository.
    pub kdf: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kdf_params: Option<crate::crypto::KeySlotKdf>,
    /// base64 of the Argon2id salt (16 bytes); empty for "none".
    pub salt: String,
    /// base64 of the sealed master key (argon2id) or the master key itself (none).
    pub key: String,
    pub created: String,
}

/// A chunk's identity: keyed BLAKE3 of its plaintext. Serialised as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(ChunkId(out))
    }
}

/// `index/<id>`: sealed metadata; where each chunk lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexPack {
    /// 64 hex characters; the object is `data/<id[0..2]>/<id>`.
    pub id: String,
    /// Hex of the 16-byte data key id (also in the pack header).
    pub key_id: String,
    pub size: u64,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexBlob {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    /// Set for a delta blob: the blob, stored whole, it was compressed against.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub base: Option<IndexBase>,
}

/// A delta's base: the whole blob at `offset` in pack `pack` (64 hex characters). An
/// index object lists that blob with its id and lengths, so they are not repeated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexBase {
    pub pack: String,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FileKind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or link of the backed-up cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// Path relative to the data directory, or to the tablespace directory.
    pub path: String,
    /// Tablespace OID, absent for the main data directory.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tablespace: Option<u32>,
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub link: Option<String>,
    /// CRC-32C of the whole file (regular files only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc32c: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// Where a backup was read from (§6.2 `source`; absent in backups written before it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSource {
    /// "primary" or "standby".
    pub role: String,
    /// The server, as `host:port` (a Unix socket directory for host).
    pub server: String,
}

/// `backup/<label>/manifest`: sealed metadata; everything needed to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format_version: u32,
    pub label: String,
    /// "full", "diff" or "incr".
    pub backup_type: String,
    /// The backup whose blocks this one did not store again (diff: the newest full;
    /// incr: the newest backup). Informational: restore never reads it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<String>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: crate::pg::Lsn,
    pub stop_lsn: crate::pg::Lsn,
    pub timeline: u32,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub block_size: u32,
    /// The backup carries the WAL needed to reach consistency (BASE_BACKUP WAL).
    pub wal_included: bool,
    /// Otherwise: the first and last archived segment it needs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wal_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wal_stop: Option<String>,
    pub backup_label: String,
    pub tablespaces: Vec<Tablespace>,
    /// Sum of regular file sizes.
    pub size: u64,
    /// Bytes of new pack data this backup wrote.
    pub stored_new: u64,
    /// Index objects written by this backup.
    pub indexes: Vec<String>,
    /// Files, directories and links; a regular file's blocks are the next
    /// `ceil(size / block_size)` entries of the block list.
    pub files: Vec<FileEntry>,
    /// Entries in the block list (`backup/<label>/blocks/*`) and per part.
    pub blocks: u64,
    pub blocks_per_part: u32,
    /// Where the backup was read from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<BackupSource>,
    /// The cluster's databases (format 6; empty in older backups, whose databases
    /// restore finds by OID from the file list).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub databases: Vec<Database>,
    /// How the backup read the cluster (format 7; absent before).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub read: Option<ReadMethod>,
}

/// How a backup read the cluster (§6.2 `read`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMethod {
    /// [`ReadMethod::SUMMARIES`] or [`ReadMethod::WHOLE`].
    pub method: String,
    /// Why a diff or incr read the whole cluster instead of using WAL summaries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fallback: Option<String>,
    /// Bytes of archive the server streamed.
    pub streamed: u64,
}

impl ReadMethod {
    /// The server sent only the pages changed since the parent (PostgreSQL 17+,
    /// `BASE_BACKUP ( INCREMENTAL )` against the parent's backup_manifest).
    pub const SUMMARIES: &'static str = "wal-summaries";
    /// The server sent every file; a diff or incr compared them with the parent.
    pub const WHOLE: &'static str = "whole-cluster";

    /// Whether the server sent changed pages only. Such a backup's stored
    /// backup_manifest lists `INCREMENTAL.*` files, not the files restore writes.
    pub fn from_summaries(&self) -> bool {
        self.method == Self::SUMMARIES
    }
}

/// A database of the backed-up cluster, as `pg_database` listed it when the backup
/// ended (or found in the file list only, without a name, when that query failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    /// Its OID: the directory name under base/ (and in tablespaces).
    pub oid: u32,
    /// `datname`; None when the backup could not query pg_database.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Its default tablespace's OID (1663 for pg_default).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tablespace: Option<u32>,
}

impl Database {
    /// Every database that has files in `files`, in OID order: those of `named` with
    /// their names, the others by OID only. A named database without files (created
    /// after its directory was streamed: its files come with the WAL) is left out.
    pub(crate) fn with_files(named: &[Database], files: &[FileEntry]) -> Vec<Database> {
        let mut found: std::collections::BTreeSet<u32> = files
            .iter()
            .filter(|f| f.kind == FileKind::File)
            .filter_map(|f| crate::pg::datadir::database_of(&f.path, f.tablespace.is_some()))
            .collect();
        let mut out: Vec<Database> = named.iter().filter(|d| found.remove(&d.oid)).cloned().collect();
        out.extend(found.into_iter().map(|oid| Database { oid, name: None, tablespace: None }));
        out.sort_by_key(|d| d.oid);
        out
    }
}

/// `backup/<label>/summary` (format 5): sealed metadata, a few hundred bytes, what
/// the catalog needs about a backup (info, expiry, choosing a backup for a target)
/// without decrypting its manifest, whose file list grows with the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub format_version: u32,
    pub label: String,
    /// "full", "diff" or "incr".
    pub backup_type: String,
    /// The backup whose blocks this one did not store again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<String>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: crate::pg::Lsn,
    pub stop_lsn: crate::pg::Lsn,
    pub timeline: u32,
    pub pg_version: u32,
    /// Sum of regular file sizes.
    pub size: u64,
    /// Bytes of new pack data the backup wrote.
    pub stored_new: u64,
    /// Regular files in the backup.
    pub files: u64,
    pub wal_included: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wal_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wal_stop: Option<String>,
    /// Block list entries and entries per part: which parts must exist.
    pub blocks: u64,
    pub blocks_per_part: u32,
    /// The index objects the backup wrote, which list every pack it wrote: what
    /// expiry deletes with it (§8.2), even once its manifest is gone.
    pub indexes: Vec<String>,
    /// Where the backup was read from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<BackupSource>,
    /// How it read the cluster (format 7).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub read: Option<ReadMethod>,
}

#[cfg(test)]
impl Summary {
    /// A full backup's summary for unit tests: `label` on `timeline`, from `start` to `stop`.
    pub(crate) fn for_tests(label: &str, timeline: u32, start: crate::pg::Lsn, stop: crate::pg::Lsn) -> Self {
        Summary {
            format_version: FORMAT_VERSION,
            label: label.into(),
            backup_type: "full".into(),
            parent: None,
            start_time: String::new(),
            stop_time: String::new(),
            start_lsn: start,
            stop_lsn: stop,
            timeline,
            pg_version: 170000,
            size: 0,
            stored_new: 0,
            files: 0,
            wal_included: false,
            wal_start: None,
            wal_stop: None,
            blocks: 0,
            blocks_per_part: 1,
            indexes: Vec::new(),
            source: None,
            read: None,
        }
    }
}

impl Summary {
    /// The summary of a complete manifest (written with it, never edited).
    pub(crate) fn of(m: &Manifest) -> Self {
        Summary {
            format_version: m.format_version,
            label: m.label.clone(),
            backup_type: m.backup_type.clone(),
            parent: m.parent.clone(),
            start_time: m.start_time.clone(),
            stop_time: m.stop_time.clone(),
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            timeline: m.timeline,
            pg_version: m.pg_version,
            size: m.size,
            stored_new: m.stored_new,
            files: m.files.iter().filter(|f| f.kind == FileKind::File).count() as u64,
            wal_included: m.wal_included,
            wal_start: m.wal_start.clone(),
            wal_stop: m.wal_stop.clone(),
            blocks: m.blocks,
            blocks_per_part: m.blocks_per_part,
            indexes: m.indexes.clone(),
            source: m.source.clone(),
            read: m.read.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk() -> impl Strategy<Value = ChunkId> {
        any::<[u8; 32]>().prop_map(ChunkId)
    }

    proptest! {
        #[test]
        fn index_json_round_trip(ids in proptest::collection::vec(chunk(), 0..20), offset in any::<u64>(), len in any::<u32>()) {
            let file = IndexFile { packs: vec![IndexPack {
                id: "ab".repeat(32), key_id: "cd".repeat(16), size: offset,
                blobs: ids.iter().map(|id| IndexBlob { id: *id, offset, length: len, raw_length: len, base: None }).collect(),
            }]};
            let back: IndexFile = serde_json::from_slice(&serde_json::to_vec(&file).unwrap()).unwrap();
            prop_assert_eq!(back, file);
        }

        #[test]
        fn file_entry_json_round_trip(path in "[a-z0-9_/]{1,40}", ts in proptest::option::of(any::<u32>()), crc in proptest::option::of(any::<u32>())) {
            let e = FileEntry { path, tablespace: ts, kind: FileKind::File, mode: 0o600, size: 5, mtime: -1, link: None, crc32c: crc };
            let back: FileEntry = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
            prop_assert_eq!(back, e);
        }
    }

    #[test]
    fn chunk_id_rejects_bad_hex() {
        assert!(serde_json::from_str::<ChunkId>("\"zz\"").is_err());
        assert!(serde_json::from_str::<ChunkId>(&format!("\"{}\"", "0".repeat(62))).is_err());
    }
}
