//! Log sequence numbers in PostgreSQL's `XXXXXXXX/XXXXXXXX` text form.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log: a byte offset into the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("invalid lsn {s:?}"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("invalid lsn {s:?}"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("invalid lsn {s:?}"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

/// Serialised in PostgreSQL's text form (`"16/B374D848"`), as manifests store it.
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!("0/2000028".parse::<Lsn>().unwrap(), Lsn(0x2000028));
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert!("02000028".parse::<Lsn>().is_err());
    }

    proptest! {
        #[test]
        fn round_trip(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
            let json = serde_json::to_string(&Lsn(v)).unwrap();
            prop_assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), Lsn(v));
        }
    }

    #[test]
    fn serialised_as_text() {
        assert_eq!(serde_json::to_string(&Lsn(0x1_0000_00FF)).unwrap(), "\"1/FF\"");
        assert!(serde_json::from_str::<Lsn>("\"zz\"").is_err());
    }
}
