//! Scalar types of the config file: durations (`250ms`, `5s`, `1m`), byte
//! sizes (`64KiB`, `10MiB`) and strings with `${ENV_VAR}` expansion.
//!
//! Each parses during deserialization, so a bad value is reported by the YAML
//! parser with its line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written with a unit: `ms`, `s`, `m` or `h` (`250ms`, `1.5s`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DurationSpec(pub Duration);

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h`; `0` alone means zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{t}` needs a unit (ms, s, m, h)"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("duration `{t}`: `{num}` is not a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "y" => 365.0 * 86_400.0,
        _ => {
            return Err(format!(
                "duration `{t}`: unknown unit `{unit}` (use ms, s, m, h, d, y)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration `{t}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationSpec)
            .map_err(de::Error::custom)
    }
}

impl Serialize for DurationSpec {
    /// In the largest unit that writes it whole: `90s`, `5m`, `250ms`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ]
        .into_iter()
        .find(|(unit, _)| ms > 0 && ms.is_multiple_of(*unit))
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        );
        s.serialize_str(&text)
    }
}

/// A byte size: a plain number of bytes, or with a unit `B`, `KiB`, `MiB`,
/// `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

/// Parses `1024`, `64KiB`, `10MiB`, `1GB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("size `{t}`: expected a whole number with an optional unit"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "size `{t}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("size `{t}` is out of range"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 65536, 64KiB or 10MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A string in which `${NAME}` is replaced by the environment variable NAME
/// when the file is read (`$${` writes a literal `${`). An unset variable is
/// an error at its location in the file.
///
/// A value that took text from the environment is shown (serialized, as
/// in `GET /config`) as `<redacted:NAME>`: environment variables are where
/// secrets come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Str(pub String, pub FromEnv);

/// The environment variables a `Str` took text from (none for most).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FromEnv(Option<Box<str>>);

impl Str {
    /// The expanded text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(s.to_owned(), FromEnv::default())
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str(s, FromEnv::default())
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Expands `${NAME}` references using `lookup`.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_env_names(text, lookup).map(|(s, _)| s)
}

/// Expands `${NAME}` references using `lookup`; also returns the names
/// used, comma-separated (`None` when none was).
fn expand_env_names(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Option<Box<str>>), String> {
    if !text.contains('$') {
        return Ok((text.to_owned(), None));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            if !names.contains(&name) {
                names.push(name);
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    let names = (!names.is_empty()).then(|| names.join(",").into_boxed_str());
    Ok((out, names))
}

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str, E> {
                expand_env_names(v, |n| std::env::var(n).ok())
                    .map(|(text, names)| Str(text, FromEnv(names)))
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Str, E> {
                Ok(Str::from(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Str, E> {
                Ok(Str::from(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Str, E> {
                Ok(Str::from(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Str, E> {
                Ok(Str::from(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Str {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.1.0 {
            Some(names) => s.serialize_str(&format!("<redacted:{names}>")),
            None => s.serialize_str(&self.0),
        }
    }
}

/// JSON Schema forms of the scalar types, for `tollgate schema`: what the
/// parser accepts, so editors complete and check the same thing.
mod schema {
    use std::borrow::Cow;

    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

    use super::{ByteSize, DurationSpec, Str};

    impl JsonSchema for DurationSpec {
        fn schema_name() -> Cow<'static, str> {
            "Duration".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "A duration with a unit: ms, s, m, h, d or y (365 days), such as `250ms`, `1.5s`, `2m`; `0` alone is zero.",
                "anyOf": [
                    { "type": "string", "pattern": "^\\s*([0-9]+(\\.[0-9]+)?(ms|s|m|h|d|y)|0)\\s*$" },
                    { "const": 0 }
                ]
            })
        }
    }

    impl JsonSchema for ByteSize {
        fn schema_name() -> Cow<'static, str> {
            "ByteSize".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "A number of bytes, or with a unit: B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000), such as `64KiB`.",
                "anyOf": [
                    { "type": "integer", "minimum": 0 },
                    { "type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KiB|MiB|GiB|KB|MB|GB)?\\s*$" }
                ]
            })
        }
    }

    impl JsonSchema for Str {
        fn schema_name() -> Cow<'static, str> {
            "Text".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "description": "Text; `${NAME}` is replaced by the environment variable NAME (`$${` is a literal `${`).",
                "type": ["string", "number", "boolean"]
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_the_largest_whole_unit_and_read_back() {
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1500, "1500ms"),
            (90_000, "90s"),
            (300_000, "5m"),
            (7_200_000, "2h"),
            (86_400_000, "1d"),
        ] {
            let d = DurationSpec(Duration::from_millis(ms));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(parse_duration(text).unwrap(), d.0);
        }
    }

    #[test]
    fn values_from_the_environment_are_shown_redacted() {
        let env = |n: &str| (n == "KEY" || n == "HOST").then(|| "v".to_owned());
        let (text, names) = expand_env_names("k=${KEY}@${HOST}:${KEY}", env).unwrap();
        assert_eq!(text, "k=v@v:v");
        let s = Str(text, FromEnv(names));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"<redacted:KEY,HOST>\""
        );
        assert_eq!(s.as_str(), "k=v@v:v");
        let plain = Str::from("plain");
        assert_eq!(serde_json::to_string(&plain).unwrap(), "\"plain\"");
        let (_, none) = expand_env_names("$${KEY}", env).unwrap();
        assert_eq!(none, None, "an escaped reference reads nothing");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12 furlongs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn env_references_expand_and_escape() {
        let env = |n: &str| (n == "HOST").then(|| "db.internal".to_owned());
        assert_eq!(
            expand_env("http://${HOST}:80", env).as_deref(),
            Ok("http://db.internal:80")
        );
        assert_eq!(expand_env("cost $5", env).as_deref(), Ok("cost $5"));
        assert_eq!(expand_env("$${HOST}", env).as_deref(), Ok("${HOST}"));
        assert!(
            expand_env("${MISSING}", env)
                .unwrap_err()
                .contains("MISSING")
        );
        assert!(expand_env("${HOST", env).is_err());
    }
}
