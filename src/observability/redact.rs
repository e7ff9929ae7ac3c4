//! Keeping secrets out of logs, errors and admin output.

/// `url` with the credentials of its authority (`user:password@`)
/// replaced by `<redacted>@`, for logs and errors. Text that is not a URL
/// with credentials comes back unchanged.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#', ' ']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>{}", &url[..scheme_end + 3], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            super::url("redis://:s3cret@127.0.0.1:6379/0"),
            "redis://<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            super::url("rediss://user:p@ss@host:1/0?x=@"),
            "rediss://<redacted>@host:1/0?x=@"
        );
        assert_eq!(
            super::url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(super::url("not a url"), "not a url");
    }
}
