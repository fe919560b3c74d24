//! Azure Blob Storage backend on object_store: `az://CONTAINER/PREFIX` in the storage
//! account `repo-azure-account`. Credentials as Azure users expect them: the account's
//! shared key or a SAS token read from a file, or (`auto`) a managed identity or AKS
//! workload identity from the AZURE_* environment. Create-only writes are
//! `If-None-Match: *` puts.

use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use super::object::{Cloud, ObjectStorage};
use crate::crypto::Secret;
use crate::error::{Error, Result};

/// How pgcairn authenticates to Azure (`repo-azure-key-type`, as pgBackRest names it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AzureKeyType {
    /// The storage account's shared key, from `repo-azure-key-file`.
    #[default]
    Shared,
    /// A shared access signature (SAS) token, from `repo-azure-key-file`.
    Sas,
    /// A managed identity (the instance metadata service) or a workload identity
    /// (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE), from the environment.
    Auto,
}

/// The Azure settings of a repository (config keys `repo-azure-*`).
#[derive(Debug, Clone, Default)]
pub struct AzureSettings {
    /// The storage account (`repo-azure-account`); None: AZURE_STORAGE_ACCOUNT_NAME under `auto`.
    pub account: Option<String>,
    /// How to authenticate.
    pub key_type: AzureKeyType,
    /// The shared key or SAS token (the contents of `repo-azure-key-file`).
    pub key: Option<Secret>,
    /// The blob service URL (`repo-azure-endpoint`): sovereign clouds, private
    /// endpoints, emulators (`http://127.0.0.1:10000/devstoreaccount1` for Azurite).
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint (`repo-azure-allow-http`).
    pub allow_http: bool,
}

impl ObjectStorage {
    /// An Azure container below `prefix`; fails on settings that cannot work.
    pub fn azure(container: &str, prefix: &str, settings: &AzureSettings) -> Result<Self> {
        let mut b = match settings.key_type {
            AzureKeyType::Auto => MicrosoftAzureBuilder::from_env(),
            // Only what the settings say: an AZURE_STORAGE_ACCOUNT_KEY in the environment
            // must not quietly win over the configured SAS token.
            _ => MicrosoftAzureBuilder::new(),
        };
        b = b.with_container_name(container);
        match &settings.account {
            Some(account) => b = b.with_account(account),
            None if settings.key_type == AzureKeyType::Auto
                && std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_some() => {}
            None => {
                return Err(Error::setting(
                    format!("repo az://{container}/{prefix} names no storage account"),
                    "set repo-azure-account to the storage account's name",
                ))
            }
        }
        b = with_key(b, settings)?;
        if let Some(ep) = &settings.endpoint {
            let http = Cloud::Azure.plain_http(ep, settings.allow_http)?;
            b = b.with_endpoint(ep.clone()).with_allow_http(http);
        }
        let store = b.build().map_err(|e| {
            Error::setting(
                format!("cannot set up azure repository az://{container}/{prefix}: {e}"),
                "check repo-azure-account, repo-azure-key-type and repo-azure-key-file (a shared key is base64)",
            )
        })?;
        Ok(Self::new(Arc::new(store), Cloud::Azure, container, prefix))
    }
}

fn with_key(b: MicrosoftAzureBuilder, settings: &AzureSettings) -> Result<MicrosoftAzureBuilder> {
    let key = settings.key.as_ref().map(|k| k.expose().trim().to_string());
    match (settings.key_type, key) {
        (AzureKeyType::Auto, _) => Ok(b),
        (AzureKeyType::Shared, Some(k)) if !k.is_empty() => Ok(b.with_access_key(k)),
        // A SAS token is copied from the portal with or without its leading '?'.
        (AzureKeyType::Sas, Some(k)) if !k.is_empty() => {
            Ok(b.with_config(AzureConfigKey::SasKey, k.trim_start_matches('?').to_string()))
        }
        (kind, _) => Err(Error::setting(
            format!(
                "repo-azure-key-type = {} needs a key, and repo-azure-key-file is not set or empty",
                if kind == AzureKeyType::Sas { "sas" } else { "shared" }
            ),
            "write the storage account key (shared) or a SAS token (sas) into a file readable only by pgcairn's user and set repo-azure-key-file to it; or set repo-azure-key-type = auto for a managed identity",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_type_without_its_key_is_named() {
        let s = AzureSettings { account: Some("acct".into()), ..Default::default() };
        let err = ObjectStorage::azure("c", "p", &s).unwrap_err().to_string();
        assert!(err.contains("repo-azure-key-file"), "{err}");
        let no_account = AzureSettings { key: Some(Secret::new("a2V5")), ..Default::default() };
        let err = ObjectStorage::azure("c", "p", &no_account).unwrap_err().to_string();
        assert!(err.contains("repo-azure-account"), "{err}");
    }

    #[test]
    fn plain_http_needs_allowing() {
        let s = AzureSettings {
            account: Some("acct".into()),
            key: Some(Secret::new("a2V5")),
            endpoint: Some("http://127.0.0.1:9/acct".into()),
            ..Default::default()
        };
        let err = ObjectStorage::azure("c", "p", &s).unwrap_err().to_string();
        assert!(err.contains("plain HTTP") && err.contains("repo-azure-allow-http"), "{err}");
        assert!(ObjectStorage::azure("c", "p", &AzureSettings { allow_http: true, ..s }).is_ok());
    }
}
