//! `content_types`: which media types are compressed.

/// One `content_types` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    kind: String,
    sub: Sub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sub {
    Any,
    Suffix(String),
    Exact(String),
}

impl TypePattern {
    /// Parses `type/subtype`, `type/*` or `type/*+suffix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || format!("`{text}`: use type/subtype, type/* or type/*+suffix");
        let (kind, sub) = t.split_once('/').ok_or_else(bad)?;
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if !token(kind) {
            return Err(bad());
        }
        let sub = match sub {
            "*" => Sub::Any,
            s if s.starts_with("*+") && token(&s[2..]) => Sub::Suffix(s[1..].to_owned()),
            s if token(s) => Sub::Exact(s.to_owned()),
            _ => return Err(bad()),
        };
        Ok(Self {
            kind: kind.to_owned(),
            sub,
        })
    }

    pub(super) fn matches(&self, kind: &str, sub: &str) -> bool {
        self.kind == kind
            && match &self.sub {
                Sub::Any => true,
                Sub::Suffix(s) => sub.ends_with(s.as_str()),
                Sub::Exact(s) => s == sub,
            }
    }
}

/// The media types compressed when `content_types` is not given.
pub const DEFAULT_TYPES: [&str; 16] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "text/xml",
    "text/csv",
    "text/markdown",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "image/svg+xml",
    "application/graphql-response+json",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns() {
        let p = |s: &str| TypePattern::parse(s).unwrap();
        assert!(p("text/*").matches("text", "csv"));
        assert!(p("application/*+json").matches("application", "problem+json"));
        assert!(!p("application/*+json").matches("application", "json"));
        assert!(p("Application/JSON").matches("application", "json"));
        for bad in ["json", "text/", "/x", "a b/c", "text/*+"] {
            assert!(TypePattern::parse(bad).is_err(), "{bad}");
        }
    }
}
