//! Parsing a setting's text into its typed value, the same for every source.

use std::path::PathBuf;
use std::time::Duration;

use pgcairn::RepoLocation;
use pgcairn::Secret;

use super::table::Kind;

/// A parsed value.
#[derive(Debug, Clone)]
pub enum Value {
    /// A [`Kind::Text`] value.
    Text(String),
    /// A [`Kind::Secret`] value.
    Secret(Secret),
    /// A [`Kind::Path`] value.
    Path(PathBuf),
    /// A [`Kind::Bool`] value.
    Bool(bool),
    /// A [`Kind::Size`] value, in bytes.
    Size(u64),
    /// A [`Kind::Seconds`] value.
    Seconds(Duration),
    /// A [`Kind::Count`] value, 1 or more.
    Count(u32),
    /// A [`Kind::Zstd`] level.
    Zstd(i32),
    /// The word of a [`Kind::Choice`], as the table spells it.
    Choice(&'static str),
    /// A [`Kind::Stanza`] name, checked.
    Stanza(String),
    /// A [`Kind::Repo`] location.
    Repo(RepoLocation),
}

/// Parse `text` as `kind`; Err says what is wrong and what would be right.
pub fn parse(kind: Kind, text: &str) -> Result<Value, String> {
    Ok(match kind {
        Kind::Text => Value::Text(text.to_string()),
        Kind::Secret => Value::Secret(Secret::new(text)),
        Kind::Path if text.is_empty() => return Err("is empty: give a path".into()),
        Kind::Path => Value::Path(PathBuf::from(text)),
        Kind::Bool => Value::Bool(parse_bool(text).ok_or("is not a boolean: use true or false (on/off, yes/no, 1/0)")?),
        Kind::Size => Value::Size(parse_size(text).ok_or("is not a size: use bytes or e.g. 128MiB (KiB, MiB, GiB)")?),
        Kind::Seconds => Value::Seconds(Duration::from_secs(
            text.trim().parse().map_err(|_| "is not a whole number of seconds".to_string())?,
        )),
        Kind::Count => match text.trim().parse::<u32>() {
            Ok(n) if n > 0 => Value::Count(n),
            _ => return Err("is not a count: use a whole number, 1 or more".into()),
        },
        Kind::Zstd => match text.trim().parse::<i32>() {
            Ok(n) if (-7..=19).contains(&n) && n != 0 => Value::Zstd(n),
            _ => return Err("is not a zstd level: use 1 (fast) to 19 (small), or -1 to -7 (faster still)".into()),
        },
        Kind::Choice(words) => Value::Choice(
            words.iter().find(|w| **w == text).copied().ok_or_else(|| format!("is not one of {}", words.join(", ")))?,
        ),
        Kind::Stanza => {
            pgcairn::check_stanza_name(text).map_err(|e| e.to_string())?;
            Value::Stanza(text.to_string())
        }
        Kind::Repo => Value::Repo(RepoLocation::parse(text).map_err(|e| e.to_string())?),
    })
}

/// A number, optionally with a binary size suffix (KiB, MiB, GiB; KB, MB, GB mean the same).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Typed access to a [`Value`] (see `Resolved::get`).
pub trait FromValue: Sized {
    /// The value as `Self`; None when it is of another kind.
    fn from_value(v: &Value) -> Option<Self>;
}

macro_rules! from_value {
    ($t:ty, $variant:ident) => {
        impl FromValue for $t {
            fn from_value(v: &Value) -> Option<Self> {
                match v {
                    Value::$variant(x) => Some(x.clone()),
                    _ => None,
                }
            }
        }
    };
}

from_value!(Secret, Secret);
from_value!(PathBuf, Path);
from_value!(bool, Bool);
from_value!(u64, Size);
from_value!(Duration, Seconds);
from_value!(i32, Zstd);
from_value!(u32, Count);
from_value!(&'static str, Choice);
from_value!(RepoLocation, Repo);

impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) | Value::Stanza(s) => Some(s.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128MiB"), Some(128 << 20));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5TB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }

    proptest::proptest! {
        /// Any text is a value or a refusal, never a panic (moved from the engine's
        /// hostile-input tests with the settings).
        #[test]
        fn any_text(text in "\\PC{0,80}") {
            for kind in [Kind::Bool, Kind::Size, Kind::Seconds, Kind::Zstd, Kind::Stanza, Kind::Repo, Kind::Path] {
                let _ = parse(kind, &text);
            }
        }
    }

    #[test]
    fn values() {
        assert!(matches!(parse(Kind::Bool, "on"), Ok(Value::Bool(true))));
        assert!(matches!(parse(Kind::Bool, "0"), Ok(Value::Bool(false))));
        assert!(matches!(parse(Kind::Bool, "NO"), Ok(Value::Bool(false))));
        assert!(parse(Kind::Bool, "info").unwrap_err().contains("not a boolean"));
        assert!(matches!(parse(Kind::Size, "128MiB"), Ok(Value::Size(n)) if n == 128 << 20));
        assert!(parse(Kind::Size, "lots").is_err());
        assert!(matches!(parse(Kind::Seconds, "3"), Ok(Value::Seconds(d)) if d == Duration::from_secs(3)));
        assert!(parse(Kind::Seconds, "3s").is_err());
        assert!(matches!(parse(Kind::Zstd, "-7"), Ok(Value::Zstd(-7))));
        for bad in ["0", "20", "-8", "banana"] {
            assert!(parse(Kind::Zstd, bad).is_err(), "{bad}");
        }
        assert!(matches!(parse(Kind::Choice(&["fail", "drop"]), "drop"), Ok(Value::Choice("drop"))));
        assert!(parse(Kind::Choice(&["fail", "drop"]), "bogus").unwrap_err().contains("fail, drop"));
        assert!(parse(Kind::Stanza, "../x").is_err());
        assert!(parse(Kind::Repo, "relative/path").is_err());
        assert!(parse(Kind::Path, "").is_err());
    }
}
