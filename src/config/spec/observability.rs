//! `observability:`: distributed tracing over OTLP.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Secret;
use crate::config::units::{DurationSpec, Str};

/// `observability:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilitySpec {
    /// OpenTelemetry traces over OTLP. Absent: no tracing (the default),
    /// which costs nothing on the request path.
    #[serde(default)]
    pub tracing: Option<TracingSpec>,
}

/// `observability.tracing`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// The collector: `http://host:4317` for `grpc`; for `http`, a URL
    /// whose path is empty gets `/v1/traces` (`http://host:4318`), any
    /// other path is used as it is. `https://` verifies the collector's
    /// certificate against the webpki roots (plus `ca_file`).
    pub endpoint: Str,
    /// `grpc` (default, OTLP/gRPC) or `http` (OTLP/HTTP with protobuf).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute. Default `tollgate`.
    #[serde(default = "default_service_name")]
    pub service_name: Str,
    /// Share of new traces recorded, from 0 to 1. Default `1`. A request
    /// that continues a trace follows its parent's sampled flag.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Headers sent with every export (an API key, `authorization`):
    /// never shown in `GET /config`, logs or errors.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Deadline of one export (connecting included). Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: DurationSpec,
    /// Spans waiting to be exported at most; more are dropped and
    /// counted. Default `2048`.
    #[serde(default = "default_max_queue_spans")]
    pub max_queue_spans: usize,
    /// Spans in one export at most. Default `512`.
    #[serde(default = "default_max_export_batch")]
    pub max_export_batch: usize,
    /// How long spans wait for a batch to fill before they are sent.
    /// Default `1s`.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: DurationSpec,
    /// Extra CA certificates (PEM) for an `https://` collector.
    #[serde(default)]
    pub ca_file: Option<Str>,
}

/// How spans are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export`), port 4317 by convention.
    #[default]
    Grpc,
    /// OTLP/HTTP with a protobuf body (`POST /v1/traces`), port 4318.
    Http,
}

fn default_service_name() -> Str {
    Str::from("tollgate")
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_timeout() -> DurationSpec {
    DurationSpec(Duration::from_secs(10))
}

fn default_max_queue_spans() -> usize {
    2048
}

fn default_max_export_batch() -> usize {
    512
}

fn default_flush_interval() -> DurationSpec {
    DurationSpec(Duration::from_secs(1))
}
