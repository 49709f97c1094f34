//! OTLP/HTTP export (protobuf): metrics through a periodic reader on the
//! same meter provider as the Prometheus exporter, and spans through a
//! batch processor. Both run on threads of their own, off the runtime.
//!
//! The standard variables are read by the exporters themselves:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (signal paths `/v1/metrics`, `/v1/traces`
//! are appended), `OTEL_EXPORTER_OTLP_{METRICS,TRACES}_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s), `OTEL_BSP_*`,
//! `OTEL_SERVICE_NAME` (default `relay`) and `OTEL_RESOURCE_ATTRIBUTES`.

use super::OtelError;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Whether to push over OTLP, as the environment says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpSettings {
    /// Push metrics (an OTLP endpoint for metrics is set).
    pub metrics: bool,
    /// Export spans (an OTLP endpoint for traces is set).
    pub traces: bool,
}

impl OtlpSettings {
    /// From the standard variables; `None` when no endpoint is set (or
    /// `OTEL_SDK_DISABLED=true`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<OtlpSettings> {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let any = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let s = OtlpSettings {
            metrics: any || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            traces: any || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        };
        (s.metrics || s.traces).then_some(s)
    }
}

/// The resource every signal carries: `service.name` (`relay` unless
/// OTEL_SERVICE_NAME says otherwise), `service.version`, and what
/// OTEL_RESOURCE_ATTRIBUTES adds.
pub fn resource() -> Resource {
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("relay").build()
    }
}

/// The periodic OTLP metrics reader.
pub(super) fn metric_reader(
    settings: &OtlpSettings,
) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, OtelError> {
    if !settings.metrics {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| OtelError::Exporter(format!("OTLP metrics: {e}")))?;
    Ok(Some(PeriodicReader::builder(exporter).build()))
}

/// The tracer provider exporting spans over OTLP, when asked for.
pub fn tracer_provider(settings: &OtlpSettings) -> Result<Option<SdkTracerProvider>, OtelError> {
    if !settings.traces {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| OtelError::Exporter(format!("OTLP traces: {e}")))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// Spans exported over OTLP: the `tracing` layer that feeds them, and the
/// provider that flushes them at exit.
#[derive(Debug)]
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// The export, when OTLP traces are asked for.
    pub fn new(settings: &OtlpSettings) -> Result<Option<SpanExport>, OtelError> {
        Ok(tracer_provider(settings)?.map(|provider| SpanExport { provider }))
    }

    /// A layer sending every span it sees to the exporter; the caller
    /// filters which.
    pub fn layer<S>(&self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        use opentelemetry::trace::TracerProvider as _;
        Box::new(tracing_opentelemetry::layer().with_tracer(self.provider.tracer("relay")))
    }

    /// Pushes what is left and stops the exporter. Blocking.
    pub fn shutdown(&self) -> Result<(), OtelError> {
        self.provider
            .shutdown()
            .map_err(|e| OtelError::Exporter(format!("OTLP traces: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_is_on_only_when_an_endpoint_is_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(OtlpSettings::from_env(env(&[])), None);
        assert_eq!(
            OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert_eq!(
            OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            Some(OtlpSettings {
                metrics: true,
                traces: true
            })
        );
        assert_eq!(
            OtlpSettings::from_env(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])),
            Some(OtlpSettings {
                metrics: false,
                traces: true
            })
        );
        assert_eq!(
            OtlpSettings::from_env(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "TRUE")
            ])),
            None
        );
    }
}
