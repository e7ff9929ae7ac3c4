//! An outline of a YAML file: the field path of every key and sequence item
//! with its line and column, so that validation errors (which know a path)
//! can name a location, and parse errors (which know a location) can name a
//! path.
//!
//! It reads block style (indentation) and flow mappings on one line, which
//! covers hand-written config files. Anything it cannot follow just has no
//! entry; lookups then fall back to the nearest ancestor.

/// Field path → position index of one YAML document.
#[derive(Debug, Default, Clone)]
pub struct Outline {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    line: u64,
    column: u64,
}

struct Frame {
    indent: usize,
    path: String,
    items: usize,
}

impl Outline {
    /// Indexes `source`.
    pub fn new(source: &str) -> Self {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        for (n, raw) in source.lines().enumerate() {
            let line_no = n as u64 + 1;
            let text = strip_comment(raw);
            let trimmed = text.trim_start();
            if trimmed.is_empty() || trimmed.starts_with("---") || trimmed.starts_with("...") {
                continue;
            }
            let mut indent = text.len() - trimmed.len();
            let mut rest = trimmed;
            let mut parent: Option<String> = None;
            // Sequence items, possibly several on one line (`- - a`).
            while rest == "-" || rest.starts_with("- ") {
                while stack.last().is_some_and(|f| {
                    f.indent > indent
                        || (f.indent == indent && parent.is_none() && f.path.ends_with(']'))
                }) {
                    stack.pop();
                }
                let owner = parent
                    .take()
                    .or_else(|| stack.last().map(|f| f.path.clone()))
                    .unwrap_or_default();
                let idx = match stack.last_mut() {
                    Some(f) if f.path == owner => {
                        f.items += 1;
                        f.items - 1
                    }
                    _ => 0,
                };
                let path = format!("{owner}[{idx}]");
                entries.push(Entry {
                    path: path.clone(),
                    line: line_no,
                    column: indent as u64 + 1,
                });
                stack.push(Frame {
                    indent,
                    path: path.clone(),
                    items: 0,
                });
                parent = Some(path);
                let after = rest[1..].trim_start();
                indent += rest.len() - after.len();
                rest = after;
            }
            if rest.is_empty() {
                continue;
            }
            if rest.starts_with(['{', '[']) {
                if let Some(item) = &parent {
                    flow_map(rest, item, line_no, indent, &mut entries);
                }
                continue;
            }
            let Some((key, value)) = split_key(rest) else {
                continue;
            };
            while stack
                .last()
                .is_some_and(|f| f.indent >= indent && parent.as_ref() != Some(&f.path))
            {
                stack.pop();
            }
            let base = parent
                .or_else(|| stack.last().map(|f| f.path.clone()))
                .unwrap_or_default();
            let path = join(&base, key);
            entries.push(Entry {
                path: path.clone(),
                line: line_no,
                column: indent as u64 + 1,
            });
            let value_col = indent + (rest.len() - value.len());
            let v = value.trim();
            if v.starts_with(['{', '[']) {
                flow_map(
                    v,
                    &path,
                    line_no,
                    value_col + (value.len() - value.trim_start().len()),
                    &mut entries,
                );
            }
            stack.push(Frame {
                indent,
                path,
                items: 0,
            });
        }
        Outline { entries }
    }

    /// Line and column of `path`, or of its nearest recorded ancestor.
    pub fn locate(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p) {
                return Some((e.line, e.column));
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Path of the last entry at or before `line:column`.
    pub fn path_at(&self, line: u64, column: u64) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.line < line || (e.line == line && e.column <= column))
            .max_by_key(|e| (e.line, e.column))
            .map(|e| e.path.as_str())
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// Removes a `#` comment that is not inside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// `key: value` → (key, value); keys may be quoted.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let (key, rest) = if let Some(q @ ('"' | '\'')) = text.chars().next() {
        let end = text[1..].find(q)? + 1;
        (&text[1..end], &text[end + 1..])
    } else {
        let colon = text
            .find(": ")
            .or_else(|| text.strip_suffix(':').map(|s| s.len()))?;
        (&text[..colon], &text[colon..])
    };
    let value = rest.strip_prefix(':')?;
    (!key.is_empty() && !key.starts_with(['{', '['])).then_some((key.trim(), value))
}

/// Deepest flow nesting followed; deeper parts of a line get no entries
/// (the parser refuses such a file anyway, with its own location).
const MAX_FLOW_DEPTH: usize = super::MAX_CONFIG_DEPTH;

/// Records the keys and items of a one-line flow collection
/// (`{ a: 1, b: [x, { c: 2 }] }`) that starts at `start_col` (0-based).
fn flow_map(text: &str, base: &str, line: u64, start_col: usize, out: &mut Vec<Entry>) {
    let mut i = 0;
    let place = Place {
        line,
        col0: start_col,
    };
    flow_value(text.as_bytes(), &mut i, base, place, 0, out);
}

/// Where a flow line starts.
#[derive(Clone, Copy)]
struct Place {
    line: u64,
    col0: usize,
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i] == b' ' {
        *i += 1;
    }
}

/// Advances past one scalar (plain or quoted); returns its text.
fn flow_scalar<'a>(b: &'a [u8], i: &mut usize, stops: &[u8]) -> &'a str {
    let start = *i;
    if let Some(&q @ (b'"' | b'\'')) = b.get(*i) {
        *i += 1;
        while *i < b.len() && b[*i] != q {
            *i += 1;
        }
        // An unterminated quote runs to the end of the line.
        let text = b.get(start + 1..*i).unwrap_or_default();
        *i = (*i + 1).min(b.len());
        return std::str::from_utf8(text).unwrap_or("");
    }
    while *i < b.len() && !stops.contains(&b[*i]) {
        *i += 1;
    }
    std::str::from_utf8(&b[start..*i]).unwrap_or("").trim()
}

fn flow_value(
    b: &[u8],
    i: &mut usize,
    path: &str,
    place: Place,
    depth: usize,
    out: &mut Vec<Entry>,
) {
    let Place { line, col0 } = place;
    skip_ws(b, i);
    if depth >= MAX_FLOW_DEPTH && matches!(b.get(*i), Some(b'{' | b'[')) {
        *i = b.len();
        return;
    }
    match b.get(*i) {
        Some(b'{') => {
            *i += 1;
            loop {
                skip_ws(b, i);
                if *i >= b.len() || b[*i] == b'}' {
                    *i += 1;
                    return;
                }
                let at = *i;
                let key = flow_scalar(b, i, b":,}");
                let child = join(path, key);
                out.push(Entry {
                    path: child.clone(),
                    line,
                    column: (col0 + at) as u64 + 1,
                });
                if b.get(*i) == Some(&b':') {
                    *i += 1;
                    flow_value(b, i, &child, place, depth + 1, out);
                }
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    _ => {
                        *i += 1;
                        return;
                    }
                }
            }
        }
        Some(b'[') => {
            *i += 1;
            let mut n = 0;
            loop {
                skip_ws(b, i);
                if *i >= b.len() || b[*i] == b']' {
                    *i += 1;
                    return;
                }
                let child = format!("{path}[{n}]");
                out.push(Entry {
                    path: child.clone(),
                    line,
                    column: (col0 + *i) as u64 + 1,
                });
                flow_value(b, i, &child, place, depth + 1, out);
                n += 1;
                skip_ws(b, i);
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    _ => {
                        *i += 1;
                        return;
                    }
                }
            }
        }
        _ => {
            flow_scalar(b, i, b",}]");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
server:
  listen: [\"0.0.0.0:8080\"]
upstreams:
  users:
    endpoints:
      - \"http://127.0.0.1:9001\"
      - { url: \"http://127.0.0.1:9002\", weight: 3 }
routes:
  - name: users   # a comment
    match:
      path_prefix: /api
    upstream: userz
  - name: ping
    match: { path: /ping, headers: { x-a: { regex: b } } }
";

    #[test]
    fn locates_block_and_flow_paths() {
        let o = Outline::new(DOC);
        assert_eq!(o.locate("server.listen"), Some((2, 3)));
        assert_eq!(o.locate("upstreams.users.endpoints[1]"), Some((7, 7)));
        assert_eq!(
            o.locate("upstreams.users.endpoints[1].weight"),
            Some((7, 41))
        );
        assert_eq!(o.locate("routes[0].upstream"), Some((12, 5)));
        assert_eq!(o.locate("routes[0].match.path_prefix"), Some((11, 7)));
        assert_eq!(o.locate("routes[1].match.path"), Some((14, 14)));
        assert_eq!(
            o.locate("routes[1].match.headers.x-a.regex"),
            Some((14, 45))
        );
        assert_eq!(o.locate("server.listen[0]"), Some((2, 12)));
        // Unknown leaf: nearest ancestor.
        assert_eq!(o.locate("routes[1].timeout"), Some((13, 3)));
    }

    #[test]
    fn finds_the_path_at_a_position() {
        let o = Outline::new(DOC);
        assert_eq!(o.path_at(12, 15), Some("routes[0].upstream"));
        assert_eq!(o.path_at(9, 5), Some("routes[0].name"));
    }

    #[test]
    fn sequences_at_the_parent_indent_are_children() {
        let o = Outline::new("routes:\n- name: a\n- name: b\n  upstream: x\n");
        assert_eq!(o.locate("routes[1].upstream"), Some((4, 3)));
    }

    #[test]
    fn deep_flow_nesting_is_not_followed_past_the_limit() {
        for open in ["[", "{a: "] {
            let line = format!("routes: {}", open.repeat(200_000));
            let o = Outline::new(&line);
            assert!(o.entries.len() <= MAX_FLOW_DEPTH + 2, "{}", o.entries.len());
        }
    }

    #[test]
    fn an_unterminated_quote_ends_the_line_without_a_panic() {
        for text in [
            "a: { b: \"",
            "a: [\"",
            "a: { \"k",
            "a: { b: 'x",
            "- {\"",
            "a: [x, '",
        ] {
            let _ = Outline::new(text);
        }
    }
}
