//! Key material: key slots (a passphrase wraps the master key), key files (the
//! unwrapped key, for the per-segment hot path), and the values that prove a key
//! belongs to a repository and that its config was not altered (§3.3, §3.4).

use base64::Engine as _;

use super::format::*;
use super::{now_rfc3339, Repository};
use crate::crypto::{self, Cipher, KeySlotKdf, Secret, KEY_LEN};
use crate::error::{Error, Result};

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Largest Argon2id costs a key slot may ask for (§3.2): 4 GiB, 64 passes, 64 lanes.
/// Bounds on a key slot's Argon2id costs: what pgcairn writes (64 MiB, 3 passes,
/// 1 lane) with headroom: 4× the memory, 4× the passes, 8× the work in all.
/// Regression (issue 21, item 7): the old bounds (4 GiB, 64 passes) let a forged
/// slot make every passphrase open take ~10 s and 4 GB, ~10 min at the most passes.
pub(super) const MAX_KDF_M_COST: u32 = 256 << 10;
pub(super) const MAX_KDF_T_COST: u32 = 12;
pub(super) const MAX_KDF_P_COST: u32 = 4;
/// m_cost × t_cost at most 8 times the default's.
pub(super) const MAX_KDF_WORK: u64 = 8 * (64 << 10) * 3;

impl Repository {
    /// Write the unwrapped master key to `path` (create-only, mode 0600).
    pub fn write_key_file(&self, path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let kf = KeyFile { repository_id: self.config.repository_id.clone(), master_key: B64.encode(&self.master[..]) };
        // Regression (issue 21, item 13): an existing file was refused with
        // "File exists" twice; it is refused by name, before anything is written.
        if path.symlink_metadata().is_ok() {
            return Err(Error::misconfigured(
                crate::error::Misconfig::Request,
                format!("key file {} already exists: it is never overwritten", path.display()),
                "choose another --output, or remove that file first if it is an old key file you no longer use",
            ));
        }
        let ctx = |e: std::io::Error| Error::io(format!("cannot write key file {}", path.display()), e);
        let mut f = crate::fsutil::DurableFile::create(path).map_err(ctx)?;
        f.file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(ctx)?;
        let json =
            serde_json::to_vec_pretty(&kf).map_err(|e| Error::Internal(format!("key file not serialisable: {e}")))?;
        f.file().write_all(&json).map_err(ctx)?;
        f.commit(crate::fsutil::Commit::CreateOnly).map_err(ctx)
    }
}

/// A key slot as `key list` shows it (never its salt or sealed key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeySlotInfo {
    /// Its id: `keys/<id>` in the repository.
    pub id: String,
    /// When it was added (RFC 3339).
    pub created: String,
    /// "argon2id" ("none" in an unencrypted repository).
    pub kdf: String,
    /// Argon2id memory cost in KiB, passes and lanes.
    pub kdf_params: Option<KeySlotKdf>,
    /// Whether this run's passphrase opened it.
    pub unlocked_this_run: bool,
}

impl Repository {
    pub(super) fn set_unlocked_slot(&self, id: &str) {
        *self.unlocked_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_string());
    }

    fn unlocked_slot_id(&self) -> Option<String> {
        self.unlocked_slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Every key slot (§3.2), oldest first.
    pub async fn key_slots(&self) -> Result<Vec<KeySlotInfo>> {
        let unlocked = self.unlocked_slot_id();
        let mut out = Vec::new();
        for info in self.storage.list(KEYS_PREFIX).await? {
            let slot: KeySlot = serde_json::from_slice(&self.storage.get(&info.key).await?)
                .map_err(|e| Error::Corrupt { what: format!("key slot {}", info.key), detail: e.to_string() })?;
            let id = info.key.trim_start_matches(KEYS_PREFIX).to_string();
            let unlocked_this_run = unlocked.as_deref() == Some(id.as_str());
            out.push(KeySlotInfo {
                id,
                created: slot.created,
                kdf: slot.kdf,
                kdf_params: slot.kdf_params,
                unlocked_this_run,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Add a key slot for `pass` (create-only write; the master key and so every
    /// object stay as they are). Returns its id.
    pub async fn add_key_slot(&self, pass: &Secret, kdf: KeySlotKdf) -> Result<String> {
        if self.config.encryption == Encryption::None {
            return Err(Error::setting(
                format!("repository {} is not encrypted: it has no passphrase to add", self.location()),
                "an unencrypted stanza cannot be given a passphrase later; create an encrypted one",
            ));
        }
        let slot = make_slot(pass, kdf, &self.config.repository_id, &self.master).await?;
        let id = hex::encode(crypto::random_bytes::<8>());
        let json = serde_json::to_vec_pretty(&slot).map_err(|e| Error::Internal(format!("key slot: {e}")))?;
        self.storage.put_new(&format!("{KEYS_PREFIX}{id}"), bytes::Bytes::from(json)).await?;
        Ok(id)
    }

    /// Remove key slot `id`. Never the last passphrase slot; not the slot that
    /// unlocked this run unless `force` (the caller must know another passphrase).
    pub(crate) async fn remove_key_slot(&self, id: &str, force: bool) -> Result<()> {
        let slots = self.key_slots().await?;
        let Some(slot) = slots.iter().find(|s| s.id == id) else {
            let known: Vec<&str> = slots.iter().map(|s| s.id.as_str()).collect();
            return Err(Error::setting(
                format!("repository {} has no key slot {id}", self.location()),
                format!("`pgcairn key list` shows them: {}", known.join(", ")),
            ));
        };
        if slots.len() == 1 {
            return Err(Error::setting(
                format!("key slot {id} is the repository's last: without it nothing could be restored"),
                "add another passphrase first (`pgcairn key add`), then remove this one",
            ));
        }
        if slot.unlocked_this_run && !force {
            return Err(Error::setting(
                format!("key slot {id} is the one this run's passphrase opened"),
                "run `key remove` with another passphrase (the one that stays), or pass --force if you are sure you know it",
            ));
        }
        self.storage.delete(&format!("{KEYS_PREFIX}{id}")).await
    }
}

/// `config_mac` (§3.4): keyed BLAKE3 over every other field of the config.
pub(super) fn config_mac(master: &[u8; KEY_LEN], config: &RepoConfig) -> String {
    let key = crypto::derive_subkey(master, INFO_CONFIG_MAC);
    blake3::keyed_hash(&key, config.mac_input().as_bytes()).to_hex().to_string()
}

/// An unencrypted config met with key material: the only honest reading is that
/// the storage's owner may have switched encryption off.
pub(super) fn claims_unencrypted(location: &str, material: &str) -> Error {
    Error::ConfigTampered {
        object: format!("{location}/{CONFIG_KEY}"),
        detail: format!(
            "it says the stanza is unencrypted, but {material} was given, so it was meant to be encrypted; if it was really created with --no-encryption, unset the passphrase"
        ),
    }
}

pub(super) fn key_check(master: &[u8; KEY_LEN], repository_id: &str) -> String {
    let key = crypto::derive_subkey(master, INFO_KEY_CHECK);
    blake3::keyed_hash(&key, repository_id.as_bytes()).to_hex().to_string()
}

/// The key file: the unwrapped master key, for hot paths (see docs/config.md).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct KeyFile {
    pub repository_id: String,
    pub master_key: String,
}

pub(super) async fn make_slot(
    pass: &Secret,
    kdf: KeySlotKdf,
    repository_id: &str,
    master: &[u8; KEY_LEN],
) -> Result<KeySlot> {
    let salt = crypto::random_bytes::<16>();
    let pass = pass.clone();
    let kek = tokio::task::spawn_blocking(move || crypto::derive_kek(pass.expose().as_bytes(), &salt, kdf))
        .await
        .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))?
        .map_err(|e| {
            Error::setting(
                format!("cannot derive the key from the passphrase: {e}"),
                "check the key slot cost settings",
            )
        })?;
    let aad = format!("{AAD_KEYSLOT_PREFIX}{repository_id}");
    let sealed = Cipher::aes(&kek).seal(aad.as_bytes(), master);
    Ok(KeySlot {
        kdf: "argon2id".into(),
        kdf_params: Some(kdf),
        salt: B64.encode(salt),
        key: B64.encode(sealed),
        created: now_rfc3339(),
    })
}

pub(super) async fn try_slot(
    slot: &KeySlot,
    passphrase: Option<&Secret>,
    config: &RepoConfig,
    location: &str,
) -> Result<Option<[u8; KEY_LEN]>> {
    let corrupt = |d: String| Error::Corrupt { what: format!("key slot in {location}"), detail: d };
    let decode = |s: &str| B64.decode(s).map_err(|e| corrupt(e.to_string()));
    match slot.kdf.as_str() {
        "none" => {
            if config.encryption != Encryption::None {
                return Err(corrupt("plain key slot in an encrypted repository".into()));
            }
            Ok(Some(decode(&slot.key)?.try_into().map_err(|_| corrupt("bad key length".into()))?))
        }
        "argon2id" => {
            let pass = passphrase.ok_or_else(|| Error::PassphraseMissing { location: location.to_string() })?.clone();
            let params = slot.kdf_params.ok_or_else(|| corrupt("argon2id slot without parameters".into()))?;
            // The slot is plaintext: costs past any sane setting would let whoever
            // writes the storage exhaust this host's memory or time.
            if params.m_cost > MAX_KDF_M_COST
                || params.t_cost > MAX_KDF_T_COST
                || params.p_cost > MAX_KDF_P_COST
                || params.m_cost as u64 * params.t_cost as u64 > MAX_KDF_WORK
            {
                return Err(corrupt(format!(
                    "argon2id costs m={} KiB t={} p={} exceed what pgcairn writes with headroom ({MAX_KDF_M_COST} KiB, {MAX_KDF_T_COST} passes, {MAX_KDF_P_COST} lanes, m×t ≤ {MAX_KDF_WORK}): a forged slot is refused before deriving",
                    params.m_cost, params.t_cost, params.p_cost
                )));
            }
            let salt = decode(&slot.salt)?;
            let sealed = decode(&slot.key)?;
            let kek = tokio::task::spawn_blocking(move || crypto::derive_kek(pass.expose().as_bytes(), &salt, params))
                .await
                .map_err(|e| Error::Internal(format!("key derivation task failed: {e}")))?
                .map_err(|e| corrupt(e.to_string()))?;
            let aad = format!("{AAD_KEYSLOT_PREFIX}{}", config.repository_id);
            match Cipher::aes(&kek).open(aad.as_bytes(), &sealed) {
                Ok(master) => Ok(Some(master.try_into().map_err(|_| corrupt("bad key length".into()))?)),
                Err(_) => Ok(None),
            }
        }
        other => Err(corrupt(format!("unknown kdf {other}"))),
    }
}
