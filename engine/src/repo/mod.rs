//! The repository: the objects of docs/repository-format.md over a
//! [`Storage`](crate::storage::Storage). Only this module knows their byte formats.
//! Opening and the authenticated config live here; key material in `keys`, sealed
//! metadata in `meta`, the chunk index in `index`, the backup list in `catalog`,
//! writing a backup in `backup_writer`, packs in `pack`, WAL objects in `wal`.

pub(crate) mod access;
pub(crate) mod backup_writer;
pub(crate) mod blob;
pub(crate) mod block_reader;
pub(crate) mod blocklist;
mod catalog;
pub(crate) mod format;
pub(crate) mod gc;
pub(crate) mod index;
pub(crate) mod key_cache;
pub(crate) mod keys;
pub(crate) mod lock;
mod meta;
pub(crate) mod pack;
pub(crate) mod results;
pub(crate) mod set;
pub(crate) mod synthetic;
pub(crate) mod wal;
pub(crate) mod wal_archive;

pub use key_cache::KeyCache;
use keys::{claims_unencrypted, config_mac, key_check, make_slot, try_slot, KeyFile, B64};

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;

use crate::crypto::{self, Cipher, KeyBytes, KeySlotKdf, KEY_LEN};
use crate::error::{Error, Result, StorageErrorKind};
use crate::storage::DynStorage;
use format::*;

pub(crate) use crate::crypto::Secret;

/// Choices fixed at stanza-create.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub encrypted: bool,
    pub block_size: u32,
    pub pack_size: u64,
    pub kdf: KeySlotKdf,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub wal_segment_size: u32,
}

/// Default block size: 32 KiB (4 pages), chosen by measurement (docs/benchmarks.md).
pub(crate) const DEFAULT_BLOCK_SIZE: u32 = 32 * 1024;
pub(crate) const DEFAULT_PACK_SIZE: u64 = 16 * 1024 * 1024;

/// An open stanza of a repository: a cheap handle (clones share one state), the
/// only reader and writer of the repository format.
#[derive(Clone)]
pub struct Repository(Arc<RepoState>);

/// What an open stanza holds; reached through [`Repository`]'s `Deref`.
pub struct RepoState {
    storage: DynStorage,
    config: RepoConfig,
    /// Wiped from memory when the handle is dropped, like every key derived here.
    master: KeyBytes,
    chunk_key: KeyBytes,
    meta: Cipher,
    /// The key slot (`keys/<id>`) whose passphrase unlocked this handle; None for a
    /// key file or a new repository.
    unlocked_slot: std::sync::Mutex<Option<String>>,
}

impl std::ops::Deref for Repository {
    type Target = RepoState;
    fn deref(&self) -> &RepoState {
        &self.0
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.storage.location()).field("config", &self.config).finish()
    }
}

/// The cipher of one purpose (metadata, data): none for an unencrypted stanza.
fn purpose_cipher(encryption: Encryption, master: &[u8; KEY_LEN], info: &[u8]) -> Cipher {
    match encryption {
        Encryption::None => Cipher::Plain,
        Encryption::Aes256Gcm => Cipher::aes(&crypto::derive_subkey(master, info)),
    }
}

pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Repository {
    /// Initialise a stanza: key slot first, `config` last (its existence marks the
    /// stanza as initialised).
    pub async fn create(
        storage: DynStorage,
        stanza: &str,
        passphrase: Option<&Secret>,
        opts: CreateOptions,
    ) -> Result<Self> {
        let location = storage.location();
        match storage.get(CONFIG_KEY).await {
            Ok(_) => return Err(Error::RepoAlreadyInitialised { location, stanza: stanza.into() }),
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
        check_stanza_name(stanza)?;
        if opts.block_size < 8192 || !opts.block_size.is_multiple_of(8192) {
            let problem = format!("block size {} is not a multiple of the 8 KiB PostgreSQL page", opts.block_size);
            return Err(Error::setting(problem, "use e.g. 131072"));
        }
        let repository_id = hex::encode(crypto::random_bytes::<16>());
        let master = crypto::random_bytes::<KEY_LEN>();
        let check = key_check(&master, &repository_id);
        let slot = if opts.encrypted {
            let pass = passphrase.ok_or_else(|| Error::PassphraseMissing { location: location.clone() })?;
            make_slot(pass, opts.kdf, &repository_id, &master).await?
        } else {
            KeySlot {
                kdf: "none".into(),
                kdf_params: None,
                salt: String::new(),
                key: B64.encode(master),
                created: now_rfc3339(),
            }
        };
        let config = RepoConfig {
            format_version: FORMAT_VERSION,
            repository_id,
            created: now_rfc3339(),
            stanza: stanza.to_string(),
            encryption: if opts.encrypted { Encryption::Aes256Gcm } else { Encryption::None },
            chunk_id: "blake3-keyed".into(),
            compression: "zstd".into(),
            block_size: opts.block_size,
            pack_size: opts.pack_size,
            system_identifier: opts.system_identifier,
            pg_version: opts.pg_version,
            wal_segment_size: opts.wal_segment_size,
            key_check: check,
            config_mac: String::new(),
        };
        let config = RepoConfig { config_mac: config_mac(&master, &config), ..config };
        let slot_key = format!("{KEYS_PREFIX}{}", hex::encode(crypto::random_bytes::<8>()));
        let slot_json = serde_json::to_vec_pretty(&slot)
            .map_err(|e| Error::Internal(format!("{slot_key} not serialisable: {e}")))?;
        storage.put_new(&slot_key, Bytes::from(slot_json)).await?;
        let repo = Self::with_master(storage, config, master);

        let config_json = serde_json::to_vec_pretty(&repo.config)
            .map_err(|e| Error::Internal(format!("{CONFIG_KEY} not serialisable: {e}")))?;
        repo.storage.put_new(CONFIG_KEY, Bytes::from(config_json)).await?;
        Ok(repo)
    }

    /// Open an initialised stanza, unlocking the master key with the passphrase.
    pub async fn open(storage: DynStorage, stanza: &str, passphrase: Option<&Secret>) -> Result<Self> {
        Self::open_cached(storage, stanza, passphrase, None).await
    }

    /// [`Repository::open`], first trying this user's key cache (docs/config.md, "The
    /// key cache") and filling it after a derivation.
    pub async fn open_cached(
        storage: DynStorage,
        stanza: &str,
        passphrase: Option<&Secret>,
        cache: Option<&KeyCache>,
    ) -> Result<Self> {
        let location = storage.location();
        let config = read_config(&storage, stanza).await?;
        if config.encryption == Encryption::None && passphrase.is_some() {
            return Err(claims_unencrypted(&location, "a passphrase"));
        }
        let slots = storage.list(KEYS_PREFIX).await?;
        if slots.is_empty() {
            return Err(Error::Corrupt { what: format!("repository {location}"), detail: "it has no key slot".into() });
        }
        let cache = cache.zip(passphrase).filter(|_| config.encryption != Encryption::None);
        if let Some(hit) = cache.and_then(|(c, p)| c.lookup(&config.repository_id, p)) {
            let listed = slots.iter().any(|info| info.key.trim_start_matches(KEYS_PREFIX) == hit.slot);
            if listed && key_check(&hit.master, &config.repository_id) == config.key_check {
                tracing::debug!("unlocked {location} with the key cache");
                let repo = Self::with_verified_master(storage, config, hit.master)?;
                repo.set_unlocked_slot(&hit.slot);
                return Ok(repo);
            }
            // Its slot removed (or the key no longer this repository's): drop the entry.
            if let Some((c, _)) = cache {
                c.forget(&config.repository_id);
            }
        }
        for info in slots {
            let slot: KeySlot = serde_json::from_slice(&storage.get(&info.key).await?)
                .map_err(|e| Error::Corrupt { what: format!("key slot {}", info.key), detail: e.to_string() })?;
            if let Some(master) = try_slot(&slot, passphrase, &config, &location).await? {
                let id = info.key.trim_start_matches(KEYS_PREFIX);
                let repository_id = config.repository_id.clone();
                let repo = Self::with_verified_master(storage, config, master)?;
                repo.set_unlocked_slot(id);
                // Cached only once the key has authenticated the config.
                if let Some((c, p)) = cache {
                    c.store(&repository_id, id, p, &master);
                }
                return Ok(repo);
            }
        }
        Err(Error::WrongPassphrase { location })
    }

    /// Open with a key file written by [`Repository::write_key_file`]: no key
    /// derivation, for commands that run once per WAL segment.
    pub async fn open_with_key_file(storage: DynStorage, stanza: &str, path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let location = storage.location();
        let config = read_config(&storage, stanza).await?;
        let create = format!("create it with `pgcairn --stanza={stanza} key-file --output=PATH`");
        let other = "use the key file written for this repository, or repo-passphrase-file instead";
        let bad = |detail: String, hint: &str| Error::setting(format!("key file {}: {detail}", path.display()), hint);
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string(), &create))?;
        if meta.permissions().mode() & 0o077 != 0 {
            let hint = "chmod 600 it (it unlocks every backup)";
            return Err(bad("is accessible by group or others".into(), hint));
        }
        let text = std::fs::read(path).map_err(|e| bad(e.to_string(), &create))?;
        let kf: KeyFile =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a pgcairn key file ({e})"), other))?;
        if kf.repository_id != config.repository_id {
            let detail =
                format!("belongs to repository {}, not to {location} ({})", kf.repository_id, config.repository_id);
            return Err(bad(detail, other));
        }
        let master: [u8; KEY_LEN] = B64
            .decode(&kf.master_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("bad key encoding".into(), other))?;
        if key_check(&master, &config.repository_id) != config.key_check {
            return Err(bad("its key does not open this repository".into(), other));
        }
        Self::with_verified_master(storage, config, master)
    }

    /// The master key opened a slot (or matched a key file): now it must also
    /// authenticate the config, or someone changed how data is written (§3.4).
    fn with_verified_master(storage: DynStorage, config: RepoConfig, master: [u8; KEY_LEN]) -> Result<Self> {
        let expected = blake3::Hash::from_hex(&config.config_mac).ok();
        let actual = blake3::Hash::from_hex(config_mac(&master, &config))
            .map_err(|e| Error::Internal(format!("config_mac is not the hex of a hash: {e}")))?;
        if expected != Some(actual) {
            return Err(Error::ConfigTampered {
                object: format!("{}/{CONFIG_KEY}", storage.location()),
                detail: "its config_mac does not match its fields under this repository's key".into(),
            });
        }
        Ok(Self::with_master(storage, config, master))
    }

    fn with_master(storage: DynStorage, config: RepoConfig, master: [u8; KEY_LEN]) -> Self {
        let chunk_key = crypto::derive_subkey(&master, INFO_CHUNK_ID);
        let meta = purpose_cipher(config.encryption, &master, INFO_METADATA);
        let unlocked_slot = std::sync::Mutex::new(None);
        Self(Arc::new(RepoState { storage, config, master: KeyBytes::new(master), chunk_key, meta, unlocked_slot }))
    }

    pub(crate) fn storage(&self) -> &DynStorage {
        &self.storage
    }
    /// The stanza's config: identity of its cluster, format and encryption settings.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    /// Where the stanza lives, for messages (never contains secrets).
    pub fn location(&self) -> String {
        self.storage.location()
    }
    pub(in crate::repo) fn chunk_key(&self) -> &[u8; KEY_LEN] {
        &self.chunk_key
    }

    /// The keyed hash that names blocks.
    pub(crate) fn chunk_hasher(&self) -> block_reader::ChunkHasher {
        block_reader::ChunkHasher::new(&self.chunk_key)
    }

    /// The reader every block comes back through, opening on `cpu`.
    pub(crate) fn block_reader(&self, cpu: crate::cpu::Cpu) -> block_reader::BlockReader {
        block_reader::BlockReader::new(self.pack_reader(), self.data_ciphers(), self.chunk_hasher(), cpu)
    }

    /// The AEAD for one purpose (`info`), or none in an unencrypted stanza.
    fn purpose_cipher(&self, info: &[u8]) -> Cipher {
        purpose_cipher(self.config.encryption, &self.master, info)
    }

    /// Reads packs by place (restore; a diff or incr reading its parent's blobs).
    pub fn pack_reader(&self) -> pack::PackReader {
        pack::PackReader::new(self.storage.clone())
    }

    /// Data ciphers by key id, derived once each (restore meets the key ids of every
    /// backup whose blocks it reuses).
    pub fn data_ciphers(&self) -> DataCiphers {
        DataCiphers {
            master: (self.config.encryption == Encryption::Aes256Gcm).then(|| self.master.clone()),
            made: Default::default(),
        }
    }
}

/// See [`Repository::data_ciphers`].
pub struct DataCiphers {
    master: Option<KeyBytes>,
    made: std::sync::Mutex<HashMap<[u8; 16], Arc<Cipher>>>,
}

impl DataCiphers {
    // Invariant: the lock is held only to look up or insert a cipher, code that
    // cannot panic, so it is never poisoned.
    #[allow(clippy::expect_used)]
    pub fn get(&self, key_id: &[u8; 16]) -> Arc<Cipher> {
        let mut made = self.made.lock().expect("cipher cache lock poisoned");
        made.entry(*key_id)
            .or_insert_with(|| {
                Arc::new(match &self.master {
                    None => Cipher::Plain,
                    Some(m) => Cipher::aes(&crypto::derive_subkey(m, &[INFO_DATA_PREFIX, key_id].concat())),
                })
            })
            .clone()
    }
}

/// Read and parse `config`, refusing a config written for another stanza.
async fn read_config(storage: &DynStorage, stanza: &str) -> Result<RepoConfig> {
    let location = storage.location();
    let raw = match storage.get(CONFIG_KEY).await {
        Ok(b) => b,
        Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {
            return Err(Error::RepoNotInitialised { location, stanza: stanza.into(), existing: Vec::new() })
        }
        Err(e) => return Err(e),
    };
    let config = parse_config(&location, &raw)?;
    if config.stanza != stanza {
        return Err(Error::Corrupt {
            what: format!("repository config in {location}"),
            detail: format!("it belongs to stanza {}, not {stanza}", config.stanza),
        });
    }
    Ok(config)
}

pub(crate) fn parse_config(location: &str, raw: &[u8]) -> Result<RepoConfig> {
    let corrupt = |detail: String| Error::Corrupt { what: format!("repository config in {location}"), detail };
    // Read the version before anything else so a future format is refused by
    // version, not by a confusing parse error.
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| corrupt(e.to_string()))?;
    let found = v.get("format_version").and_then(|x| x.as_u64()).ok_or_else(|| corrupt("no format_version".into()))?;
    if !format::readable_format(found) {
        return Err(Error::UnsupportedFormat {
            location: location.to_string(),
            found: found as u32,
            supported: FORMAT_VERSION,
            oldest: format::OLDEST_READABLE_FORMAT,
        });
    }
    serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use crate::storage::Storage;

    fn opts(encrypted: bool) -> CreateOptions {
        CreateOptions {
            encrypted,
            block_size: DEFAULT_BLOCK_SIZE,
            pack_size: DEFAULT_PACK_SIZE,
            kdf: KeySlotKdf { m_cost: 256, t_cost: 1, p_cost: 1 },
            system_identifier: 42,
            pg_version: 170000,
            wal_segment_size: 16 << 20,
        }
    }

    pub(crate) async fn test_repo(encrypted: bool) -> (Arc<MemoryStorage>, Repository) {
        let mem = Arc::new(MemoryStorage::new());
        let r = Repository::create(mem.clone(), "main", Some(&Secret::new("pw")), opts(encrypted)).await.unwrap();
        (mem, r)
    }

    #[tokio::test]
    async fn create_open_and_wrong_passphrase() {
        let s: DynStorage = Arc::new(MemoryStorage::new());
        let pw = Secret::new("correct horse");
        Repository::create(s.clone(), "main", Some(&pw), opts(true)).await.unwrap();
        let r = Repository::open(s.clone(), "main", Some(&pw)).await.unwrap();
        assert_eq!(r.config().system_identifier, 42);
        let err = Repository::open(s.clone(), "main", Some(&Secret::new("wrong"))).await.unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        let err = Repository::open(s.clone(), "main", None).await.unwrap_err();
        assert!(matches!(err, Error::PassphraseMissing { .. }), "{err}");
        let err = Repository::create(s, "main", Some(&pw), opts(true)).await.unwrap_err();
        assert!(matches!(err, Error::RepoAlreadyInitialised { .. }), "{err}");
    }

    /// An encrypted stanza opened once with `pw` through a key cache in a temp directory.
    async fn cached_repo(pw: &Secret) -> (tempfile::TempDir, KeyCache, DynStorage, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let cache = KeyCache::new(dir.path());
        let s: DynStorage = Arc::new(MemoryStorage::new());
        let r = Repository::create(s.clone(), "main", Some(pw), opts(true)).await.unwrap();
        Repository::open_cached(s.clone(), "main", Some(pw), Some(&cache)).await.unwrap();
        (dir, cache, s, r)
    }

    /// Issue 26: the README's configuration (a passphrase file) paid an Argon2id
    /// derivation on every archive-push. The key cache skips it — only while the
    /// passphrase matches and its slot is still listed.
    #[tokio::test]
    async fn key_cache_skips_the_derivation_while_passphrase_and_slot_hold() {
        use std::os::unix::fs::PermissionsExt;
        let pw = Secret::new("correct horse");
        let (_dir, cache, s, r) = cached_repo(&pw).await;
        let slot = r.key_slots().await.unwrap()[0].id.clone();
        let user_dir = cache.dir().to_path_buf();
        let entry = user_dir.join(format!("{}.key", r.config().repository_id));
        assert_eq!(std::fs::metadata(&user_dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).contains("correct horse"));
        // The slot made unreadable: only an open that never reads it (the cache) works.
        let slot_key = format!("{KEYS_PREFIX}{slot}");
        s.delete(&slot_key).await.unwrap();
        s.put_new(&slot_key, Bytes::from_static(b"not a slot")).await.unwrap();
        let cached = Repository::open_cached(s.clone(), "main", Some(&pw), Some(&cache)).await.unwrap();
        assert_eq!(cached.config().repository_id, r.config().repository_id);
        assert!(cached.key_slots().await.unwrap_err().to_string().contains("key slot"));
        let err = Repository::open(s.clone(), "main", Some(&pw)).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "without the cache the slot is read: {err}");
        // Another passphrase does not match the entry: the slots decide (and fail here).
        let other = Repository::open_cached(s.clone(), "main", Some(&Secret::new("x")), Some(&cache)).await;
        assert!(other.is_err(), "a passphrase the entry was not made with is not let in");
        // Its slot removed (`key remove`): the entry no longer opens anything.
        s.delete(&slot_key).await.unwrap();
        r.add_key_slot(&Secret::new("new one"), KeySlotKdf { m_cost: 256, t_cost: 1, p_cost: 1 }).await.unwrap();
        let err = Repository::open_cached(s.clone(), "main", Some(&pw), Some(&cache)).await.unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        assert!(!entry.exists(), "the entry of a removed slot is deleted, not kept in memory");
    }

    /// An entry is trusted only in this user's own 0700 directory, as a 0600 regular
    /// file: anything else is a miss (the passphrase path runs), never an error.
    #[tokio::test]
    async fn key_cache_ignores_what_is_not_this_users_alone() {
        use std::os::unix::fs::PermissionsExt;
        let pw = Secret::new("pw");
        let (_dir, cache, s, r) = cached_repo(&pw).await;
        let id = r.config().repository_id.clone();
        assert!(cache.lookup(&id, &pw).is_some());
        assert!(cache.lookup(&id, &Secret::new("other")).is_none());
        let user_dir = cache.dir().to_path_buf();
        let entry = user_dir.join(format!("{id}.key"));
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(cache.lookup(&id, &pw).is_none(), "group-readable entry");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(cache.lookup(&id, &pw).is_none(), "directory others can enter");
        std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::rename(&entry, user_dir.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(user_dir.join("elsewhere"), &entry).unwrap();
        assert!(cache.lookup(&id, &pw).is_none(), "a symbolic link");
        std::fs::remove_file(&entry).unwrap();
        std::fs::write(&entry, b"{ not json").unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(cache.lookup(&id, &pw).is_none(), "garbage");
        // A miss opens with the passphrase and writes a good entry again.
        Repository::open_cached(s, "main", Some(&pw), Some(&cache)).await.unwrap();
        assert!(cache.lookup(&id, &pw).is_some());
    }

    #[tokio::test]
    async fn key_file_opens_only_its_repository() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s: DynStorage = Arc::new(MemoryStorage::new());
        let r = Repository::create(s.clone(), "main", Some(&Secret::new("pw")), opts(true)).await.unwrap();
        let kf = dir.path().join("key");
        r.write_key_file(&kf).unwrap();
        assert_eq!(std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(r.write_key_file(&kf).is_err(), "key file is create-only");
        let r2 = Repository::open_with_key_file(s.clone(), "main", &kf).await.unwrap();
        assert_eq!(r2.config().repository_id, r.config().repository_id);
        let other: DynStorage = Arc::new(MemoryStorage::new());
        Repository::create(other.clone(), "main", Some(&Secret::new("pw")), opts(true)).await.unwrap();
        let err = Repository::open_with_key_file(other, "main", &kf).await.unwrap_err();
        assert!(err.to_string().contains("belongs to repository"), "{err}");
        // Right repository id, wrong key (an edited or mixed-up file): refused.
        let forged = dir.path().join("forged");
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&kf).unwrap()).unwrap();
        json["master_key"] = B64.encode([7u8; 32]).into();
        std::fs::write(&forged, serde_json::to_vec(&json).unwrap()).unwrap();
        std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Repository::open_with_key_file(s.clone(), "main", &forged).await.unwrap_err();
        assert!(err.to_string().contains("does not open this repository"), "{err}");
        std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Repository::open_with_key_file(s, "main", &kf).await.unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[tokio::test]
    async fn not_initialised_and_unknown_version() {
        let mem = Arc::new(MemoryStorage::new());
        let s: DynStorage = mem.clone();
        let err = Repository::open(s.clone(), "main", None).await.unwrap_err();
        assert!(matches!(err, Error::RepoNotInitialised { .. }), "{err}");
        Repository::create(s.clone(), "main", None, opts(false)).await.unwrap();
        let mut cfg: serde_json::Value = serde_json::from_slice(&s.get(CONFIG_KEY).await.unwrap()).unwrap();
        cfg["format_version"] = 99.into();
        mem.overwrite(CONFIG_KEY, Bytes::from(serde_json::to_vec(&cfg).unwrap()));
        let err = Repository::open(s, "main", None).await.unwrap_err();
        assert!(matches!(err, Error::UnsupportedFormat { found: 99, .. }), "{err}");
    }

    async fn edit_config(mem: &MemoryStorage, edit: impl FnOnce(&mut serde_json::Value)) {
        let raw = mem.get(CONFIG_KEY).await.unwrap();
        let mut cfg: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        edit(&mut cfg);
        mem.overwrite(CONFIG_KEY, Bytes::from(serde_json::to_vec(&cfg).unwrap()));
    }

    /// Regression (issue 10, defect 1): whoever could write the storage changed
    /// `"encryption": "aes-256-gcm"` to `"none"` in the plaintext config, and every
    /// later backup and archive-push stored plain zstd. Now the config carries a MAC
    /// under the master key, checked on every open, passphrase or key file.
    #[tokio::test]
    async fn edited_config_is_refused_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemoryStorage::new());
        let s: DynStorage = mem.clone();
        let pw = Secret::new("pw");
        let r = Repository::create(s.clone(), "main", Some(&pw), opts(true)).await.unwrap();
        let kf = dir.path().join("key");
        r.write_key_file(&kf).unwrap();
        let original = s.get(CONFIG_KEY).await.unwrap();
        let edits: [(&str, serde_json::Value); 4] = [
            ("encryption", "none".into()),
            ("block_size", 65536.into()),
            ("system_identifier", 7.into()),
            ("compression", "lz4".into()),
        ];
        for (field, value) in edits {
            edit_config(&mem, |c| c[field] = value.clone()).await;
            for opened in [
                Repository::open(s.clone(), "main", Some(&pw)).await,
                Repository::open_with_key_file(s.clone(), "main", &kf).await,
            ] {
                let err = opened.unwrap_err();
                assert!(matches!(err, Error::ConfigTampered { .. }), "{field}: {err}");
                assert!(err.to_string().contains("/config fails authentication"), "{err}");
                assert_eq!(err.exit_code(), 8);
            }
            mem.overwrite(CONFIG_KEY, original.clone());
        }
        Repository::open(s.clone(), "main", Some(&pw)).await.unwrap();
    }

    /// The whole-replacement variant of the downgrade: the attacker swaps in an
    /// unencrypted config with a `none` slot holding a key of their own, so the MAC
    /// verifies. A passphrase means the operator expects encryption: refused.
    #[tokio::test]
    async fn unencrypted_config_with_a_passphrase_is_refused() {
        let mem = Arc::new(MemoryStorage::new());
        let s: DynStorage = mem.clone();
        let pw = Secret::new("pw");
        Repository::create(s.clone(), "main", Some(&pw), opts(true)).await.unwrap();
        let forged = Arc::new(MemoryStorage::new());
        Repository::create(forged.clone(), "main", None, opts(false)).await.unwrap();
        for info in s.list("").await.unwrap() {
            s.delete(&info.key).await.unwrap();
        }
        for info in forged.list("").await.unwrap() {
            mem.overwrite(&info.key, forged.get(&info.key).await.unwrap());
        }
        let err = Repository::open(s.clone(), "main", Some(&pw)).await.unwrap_err();
        assert!(matches!(err, Error::ConfigTampered { .. }), "{err}");
        assert!(err.to_string().contains("says the stanza is unencrypted"), "{err}");
        // Without key material it is what it says: an unencrypted stanza.
        assert_eq!(Repository::open(s, "main", None).await.unwrap().config().encryption, Encryption::None);
    }

    #[tokio::test]
    async fn key_slot_with_absurd_costs_is_refused() {
        let mem = Arc::new(MemoryStorage::new());
        let s: DynStorage = mem.clone();
        let pw = Secret::new("pw");
        Repository::create(s.clone(), "main", Some(&pw), opts(true)).await.unwrap();
        let slot = s.list(KEYS_PREFIX).await.unwrap().remove(0).key;
        let mut json: serde_json::Value = serde_json::from_slice(&s.get(&slot).await.unwrap()).unwrap();
        json["kdf_params"]["m_cost"] = (u32::MAX).into();
        mem.overwrite(&slot, Bytes::from(serde_json::to_vec(&json).unwrap()));
        let err = Repository::open(s.clone(), "main", Some(&pw)).await.unwrap_err();
        assert!(err.to_string().contains("exceed what pgcairn writes"), "{err}");
        // Issue 21, item 7: 4 GiB × 64 passes was allowed (~10 min per open); the
        // largest single costs within bounds but together past 8× the work are not.
        json["kdf_params"] = serde_json::json!({"m_cost": 256 << 10, "t_cost": 12, "p_cost": 1});
        mem.overwrite(&slot, Bytes::from(serde_json::to_vec(&json).unwrap()));
        let err = Repository::open(s, "main", Some(&pw)).await.unwrap_err();
        assert!(err.to_string().contains("m×t"), "{err}");
    }

    #[tokio::test]
    async fn metadata_is_sealed_and_bound_to_its_key() {
        let mem = Arc::new(MemoryStorage::new());
        let s: DynStorage = mem.clone();
        let r = Repository::create(s.clone(), "main", Some(&Secret::new("pw")), opts(true)).await.unwrap();
        r.put_meta_bytes("index/a", b"secret-index-content").await.unwrap();
        let raw = s.get("index/a").await.unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"), "plaintext visible in object");
        assert_eq!(r.get_meta_bytes("index/a").await.unwrap(), b"secret-index-content");
        // The same bytes under another name fail authentication.
        mem.overwrite("index/b", raw);
        assert!(matches!(r.get_meta_bytes("index/b").await.unwrap_err(), Error::Corrupt { .. }));
    }
}
