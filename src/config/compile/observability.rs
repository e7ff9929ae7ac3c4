//! `observability.tracing`: the tracer, carried over (with its queue and
//! export task) by a reload that leaves it as it was.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::Errors;
use crate::config::spec::{OtlpProtocol, Spec};
use crate::observability::trace::{Tracer, TracerSettings};
use crate::snapshot::Snapshot;

pub(super) fn tracer(
    spec: &Spec,
    previous: Option<&Snapshot>,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> Option<Arc<Tracer>> {
    let t = spec.observability.tracing.as_ref()?;
    let p = "observability.tracing";
    let before = errs.0.len();
    let endpoint = match t.endpoint.as_str().parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
            let bare = u.path_and_query().is_none_or(|pq| pq.as_str() == "/");
            match t.protocol {
                OtlpProtocol::Http if bare => format!(
                    "{}://{}/v1/traces",
                    u.scheme_str().unwrap_or("http"),
                    u.authority().map_or("", |a| a.as_str())
                )
                .parse()
                .unwrap_or(u),
                OtlpProtocol::Grpc if !bare => {
                    errs.push(
                        format!("{p}.endpoint"),
                        "an OTLP/gRPC endpoint has no path: give `http://host:4317`",
                    );
                    u
                }
                _ => u,
            }
        }
        _ => {
            errs.push(
                format!("{p}.endpoint"),
                format!(
                    "`{}` is not an http:// or https:// URL with a host",
                    t.endpoint
                ),
            );
            Uri::default()
        }
    };
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errs.push(format!("{p}.sample_ratio"), "must be from 0 to 1");
    }
    if t.service_name.as_str().is_empty() {
        errs.push(format!("{p}.service_name"), "must not be empty");
    }
    if t.timeout.0.is_zero() {
        errs.push(format!("{p}.timeout"), "must be more than zero");
    }
    if t.flush_interval.0.is_zero() {
        errs.push(format!("{p}.flush_interval"), "must be more than zero");
    }
    if !(1..=1_000_000).contains(&t.max_queue_spans) {
        errs.push(format!("{p}.max_queue_spans"), "must be from 1 to 1000000");
    }
    if t.max_export_batch == 0 || t.max_export_batch > t.max_queue_spans {
        errs.push(
            format!("{p}.max_export_batch"),
            "must be more than 0 and at most max_queue_spans",
        );
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &t.headers {
        let field = format!("{p}.headers.{name}");
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(mut v)) => {
                v.set_sensitive(true);
                headers.insert(n, v);
            }
            (Err(_), _) => errs.push(field, "not a valid header name"),
            // The value is a secret: the error does not show it.
            (_, Err(_)) => errs.push(field, "the value is not a valid header value"),
        }
    }
    let ca = t.ca_file.as_ref().and_then(|f| {
        super::auth::read(base, f.as_str(), &format!("{p}.ca_file"), errs, files_hash)
    });
    if errs.0.len() > before {
        return None;
    }
    let settings = TracerSettings {
        endpoint,
        protocol: t.protocol,
        service_name: t.service_name.as_str().to_owned(),
        sample_ratio: t.sample_ratio,
        headers,
        timeout: t.timeout.0,
        max_queue: t.max_queue_spans,
        max_batch: t.max_export_batch,
        flush_interval: t.flush_interval.0,
        ca,
    };
    if let Some(prev) = previous.and_then(|s| s.tracer.as_ref())
        && prev.settings == settings
    {
        return Some(Arc::clone(prev));
    }
    match Tracer::new(settings) {
        Ok(t) => Some(Arc::new(t)),
        Err(m) => {
            errs.push(format!("{p}.ca_file"), m);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::snapshot::Snapshot;

    fn compile(tracing: &str, timeout: &str, previous: Option<&Snapshot>) -> Snapshot {
        let text = format!(
            "observability:\n  tracing: {tracing}\nroutes:\n  - {{ name: a, match: {{ path: /a }}, respond: {{ body: a }}, timeout: {timeout} }}\n"
        );
        let (spec, version) = crate::config::parse("t.yaml", &text).unwrap();
        super::super::compile(spec, version, previous, Path::new(".")).unwrap()
    }

    #[test]
    fn an_unchanged_tracer_is_carried_over_and_a_changed_one_is_not() {
        let first = compile("{ endpoint: \"http://c:4317\" }", "5s", None);
        let kept = compile("{ endpoint: \"http://c:4317\" }", "9s", Some(&first));
        assert!(Arc::ptr_eq(
            first.tracer.as_ref().unwrap(),
            kept.tracer.as_ref().unwrap()
        ));
        let moved = compile("{ endpoint: \"http://d:4317\" }", "9s", Some(&kept));
        assert!(!Arc::ptr_eq(
            kept.tracer.as_ref().unwrap(),
            moved.tracer.as_ref().unwrap()
        ));
        // A new secret header is a change too, although `GET /config`
        // shows both as `<redacted>`.
        let a = compile(
            "{ endpoint: \"http://c:4317\", headers: { k: one } }",
            "9s",
            Some(&moved),
        );
        let b = compile(
            "{ endpoint: \"http://c:4317\", headers: { k: two } }",
            "9s",
            Some(&a),
        );
        assert!(!Arc::ptr_eq(
            a.tracer.as_ref().unwrap(),
            b.tracer.as_ref().unwrap()
        ));
    }
}
