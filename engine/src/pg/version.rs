//! Per-major-version knowledge. pgcairn supports PostgreSQL 15 to 18: 15 is the
//! first release with the new BASE_BACKUP CopyData framing we rely on.

pub(crate) const MIN_MAJOR: u32 = 15;
pub(crate) const MAX_MAJOR: u32 = 18;

/// Constants that differ between major versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MajorConstants {
    pub major: u32,
    /// XLOG_PAGE_MAGIC: first two bytes of every WAL page header.
    pub wal_page_magic: u16,
    /// Whether BASE_BACKUP supports INCREMENTAL (needs summarize_wal).
    pub incremental_backup: bool,
}

const TABLE: [MajorConstants; 4] = [
    MajorConstants { major: 15, wal_page_magic: 0xD110, incremental_backup: false },
    MajorConstants { major: 16, wal_page_magic: 0xD113, incremental_backup: false },
    MajorConstants { major: 17, wal_page_magic: 0xD116, incremental_backup: true },
    MajorConstants { major: 18, wal_page_magic: 0xD118, incremental_backup: true },
];

pub(crate) fn constants(major: u32) -> Option<MajorConstants> {
    TABLE.iter().copied().find(|c| c.major == major)
}

/// server_version_num (e.g. 170004) from the `server_version` parameter
/// ("17.4", "15.18 (Debian 15.18-0+deb12u1)", "18beta1").
pub(crate) fn parse_server_version(s: &str) -> Option<u32> {
    let head: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = head.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

pub(crate) fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_server_version("17.4"), Some(170004));
        assert_eq!(parse_server_version("15.18 (Debian 15.18-0+deb12u1)"), Some(150018));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("x"), None);
        assert_eq!(major_of(170004), 17);
    }

    #[test]
    fn every_supported_major_has_constants() {
        for m in MIN_MAJOR..=MAX_MAJOR {
            assert!(constants(m).is_some(), "missing constants for {m}");
        }
        assert!(constants(14).is_none());
    }
}
