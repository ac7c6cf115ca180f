//! One trace across three services: spans, W3C trace context and metrics.
//!
//! ```text
//! cargo run --example tracing                                   # the in-memory broker
//! EVENT_BROKER=kafka://127.0.0.1:9092 cargo run --example tracing
//! EVENT_BROKER=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example tracing
//! EVENT_BROKER=nats://127.0.0.1:4222 cargo run --example tracing
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 cargo run --example tracing
//! RUST_LOG=info,event=debug cargo run --example tracing
//! ```
//!
//! Three services in one process, each with its own connection to the broker `EVENT_BROKER`
//! names, pass an order along:
//!
//! ```text
//! orders ──OrderPlaced──▶ payments ──PaymentRequested──▶ ledger ──PaymentCaptured──▶ orders
//! ```
//!
//! What it shows:
//! - the handlers' log lines carry their process span's fields: trace id, message id, topic,
//!   handler, correlation id (the `fmt` layer, filtered by `RUST_LOG`, `info` by default);
//! - the trace context travels in the message headers (`traceparent`), so the publish and
//!   process spans of all three hops hang under one root span, `place_order`: the program
//!   prints that trace as a tree and fails when the chain is not one trace;
//! - with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the spans are also exported over OTLP
//!   (HTTP/protobuf) to a collector (Jaeger, Tempo, ...);
//! - the framework's metrics, recorded through the `metrics` facade and dumped at the end.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use event_core::broker::{self, Broker, PublishError, SubscribeOptions};
use event_core::{Context, Publisher, RunningService, Service, State, Topic};
use event_kafka::{KafkaBroker, TopicSpec};
use event_proto::shop::v1::{LineItem, OrderPlaced, PaymentCaptured, PaymentRequested};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

// The amqp:// and nats:// schemes are registered when their crates are linked; nothing else
// refers to them.
use event_amqp as _;
use event_nats as _;

#[path = "tracing/report.rs"]
mod report;

const ORDERS_PLACED: Topic<OrderPlaced> = Topic::new("tracing.orders.placed");
const PAYMENTS_REQUESTED: Topic<PaymentRequested> = Topic::new("tracing.payments.requested");
const PAYMENTS_CAPTURED: Topic<PaymentCaptured> = Topic::new("tracing.payments.captured");
const TOPICS: [&str; 3] = [
    ORDERS_PLACED.name(),
    PAYMENTS_REQUESTED.name(),
    PAYMENTS_CAPTURED.name(),
];

/// The target of this program's own spans and log lines (`RUST_LOG=shop=debug`).
const TARGET: &str = "shop";

/// How long the three hops may take.
const CHAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `payments` service's state.
#[derive(Clone)]
struct Payments {
    requested: Publisher<PaymentRequested>,
}

/// The `ledger` service's state.
#[derive(Clone)]
struct Ledger {
    captured: Publisher<PaymentCaptured>,
}

/// The `orders` service's state: the order this run waits for, and who waits.
#[derive(Clone)]
struct Orders {
    order_id: String,
    done: Arc<Mutex<Option<oneshot::Sender<PaymentCaptured>>>>,
}

/// payments: an order was placed, ask for its payment.
async fn request_payment(
    order: OrderPlaced,
    State(payments): State<Payments>,
) -> Result<(), PublishError> {
    tracing::info!(
        target: TARGET,
        order_id = %order.order_id,
        amount_cents = order.total_cents,
        "payments: requesting the payment"
    );
    // no context passed: the handler's own (its trace, correlation id) goes on
    payments
        .requested
        .publish(&PaymentRequested {
            order_id: order.order_id,
            amount_cents: order.total_cents,
        })
        .await?;
    Ok(())
}

/// ledger: capture the payment and book it.
async fn capture_payment(
    request: PaymentRequested,
    State(ledger): State<Ledger>,
) -> Result<(), PublishError> {
    tracing::info!(
        target: TARGET,
        order_id = %request.order_id,
        amount_cents = request.amount_cents,
        "ledger: payment captured"
    );
    ledger
        .captured
        .publish(&PaymentCaptured {
            provider_reference: format!("psp-{}", request.order_id),
            order_id: request.order_id,
            amount_cents: request.amount_cents,
        })
        .await?;
    Ok(())
}

/// orders: the payment of an order went through.
async fn order_paid(captured: PaymentCaptured, State(orders): State<Orders>) {
    if captured.order_id != orders.order_id {
        // a leftover of an earlier run on a durable broker
        tracing::info!(target: TARGET, order_id = %captured.order_id, "orders: not this run's order, ignored");
        return;
    }
    tracing::info!(
        target: TARGET,
        order_id = %captured.order_id,
        reference = %captured.provider_reference,
        "orders: order paid"
    );
    if let Some(done) = orders.done.lock().expect("not poisoned").take() {
        let _ = done.send(captured);
    }
}

/// What `main` set up for observability.
struct Telemetry {
    provider: SdkTracerProvider,
    spans: InMemorySpanExporter,
    otlp: Option<String>,
    metrics: Snapshotter,
}

/// Installs the propagator, the tracing subscriber (fmt + OpenTelemetry layers) and the
/// metrics recorder.
fn init_telemetry() -> Result<Telemetry, Box<dyn std::error::Error>> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Spans are always kept in memory (for the tree and the check at the end); with an OTLP
    // endpoint they are exported too, in batches.
    let spans = InMemorySpanExporter::default();
    let mut provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("event-tracing-example")
                .build(),
        )
        .with_simple_exporter(spans.clone());
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty());
    if otlp.is_some() {
        use opentelemetry_otlp::WithExportConfig as _;
        // the endpoint, headers and timeout are read from the OTEL_EXPORTER_OTLP_* variables
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();

    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // the framework's spans and this program's; not the HTTP client's or the brokers'
    // clients', nor the framework's spans of unsampled traces (head sampling: see
    // `event_core::telemetry`; every trace is sampled unless `set_root_sampling` says less)
    let trace_filter = Targets::new()
        .with_target("event", tracing::Level::INFO)
        .with_target(
            event_core::telemetry::UNSAMPLED_TARGET,
            tracing_subscriber::filter::LevelFilter::OFF,
        )
        .with_target(TARGET, tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                .with_ansi(std::io::stdout().is_terminal())
                .with_filter(log_filter),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("event-examples"))
                .with_filter(trace_filter),
        )
        .try_init()?;

    // Before any publisher or service is made: their instruments are registered then.
    let recorder = DebuggingRecorder::new();
    let metrics = recorder.snapshotter();
    recorder
        .install()
        .map_err(|_| "a metrics recorder is already installed")?;

    Ok(Telemetry {
        provider,
        spans,
        otlp,
        metrics,
    })
}

/// Kafka clusters do not create topics on demand: create them, dead-letter topics included.
async fn ensure_kafka_topics(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let admin = KafkaBroker::from_url(&url.parse()?)?;
    let mut specs = Vec::new();
    for topic in TOPICS {
        specs.push(TopicSpec::new(topic).partitions(3));
        specs.push(TopicSpec::new(format!("{topic}.dlq")));
    }
    admin.ensure_topics(&specs).await?;
    admin.disconnect().await?;
    Ok(())
}

/// A unique order id, so that leftovers of earlier runs on a durable broker are told apart.
fn new_order_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("o-{:x}", nanos & 0xffff_ffff_ffff)
}

async fn run(telemetry: &Telemetry) -> Result<String, Box<dyn std::error::Error>> {
    let url = std::env::var(broker::ENV_BROKER)
        .unwrap_or_else(|_| broker::DEFAULT_BROKER_URL.to_owned())
        .trim()
        .to_owned();
    let scheme = url.split("://").next().unwrap_or_default();
    if scheme.eq_ignore_ascii_case("kafka") || scheme.eq_ignore_ascii_case("kafkas") {
        ensure_kafka_topics(&url).await?;
    }

    // Each service has its own broker client, as if it ran in its own process.
    let brokers: Vec<Arc<dyn Broker>> = (0..3)
        .map(|_| broker::connect(&url))
        .collect::<Result<_, _>>()?;
    let address = brokers[0].address();
    println!("broker: {address} ({})", brokers[0].messaging_system());
    match &telemetry.otlp {
        Some(endpoint) => println!("spans: in memory, and exported over OTLP/HTTP to {endpoint}"),
        None => println!("spans: in memory (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)"),
    }

    let order_id = new_order_id();
    let (done, paid) = oneshot::channel();

    let ledger = Service::builder("ledger")
        .broker(brokers[0].clone())
        .state(Ledger {
            captured: Publisher::new(brokers[0].clone(), "ledger", PAYMENTS_CAPTURED),
        })
        .subscribe_with(
            PAYMENTS_REQUESTED,
            SubscribeOptions::new().queue("ledger"),
            capture_payment,
        )
        .build()?
        .start()
        .await?;
    let payments = Service::builder("payments")
        .broker(brokers[1].clone())
        .state(Payments {
            requested: Publisher::new(brokers[1].clone(), "payments", PAYMENTS_REQUESTED),
        })
        .subscribe_with(
            ORDERS_PLACED,
            SubscribeOptions::new().queue("payments"),
            request_payment,
        )
        .build()?
        .start()
        .await?;
    let orders = Service::builder("orders")
        .broker(brokers[2].clone())
        .state(Orders {
            order_id: order_id.clone(),
            done: Arc::new(Mutex::new(Some(done))),
        })
        .subscribe_with(
            PAYMENTS_CAPTURED,
            SubscribeOptions::new().queue("orders"),
            order_paid,
        )
        .build()?
        .start()
        .await?;
    let services = [orders, payments, ledger];

    // The request that starts it all: a root span of our own.
    let root = tracing::info_span!(target: TARGET, "place_order", order.id = %order_id);
    let trace_id = root.context().span().span_context().trace_id();
    let placed = services[0].publisher(ORDERS_PLACED);
    let order = OrderPlaced {
        order_id: order_id.clone(),
        user_id: "u-1".into(),
        items: vec![LineItem {
            sku: "book-42".into(),
            quantity: 2,
            unit_price_cents: 1_250,
        }],
        total_cents: 2_500,
    };
    let ctx = Context::new().with_correlation_id(format!("checkout-{order_id}"));
    let receipt = async {
        tracing::info!(target: TARGET, order_id = %order_id, "orders: placing the order");
        placed.publish_with(&ctx, &order).await
    }
    .instrument(root)
    .await?;
    println!(
        "orders: placed {order_id} (message {}, {}) in trace {trace_id}",
        receipt.message_id().unwrap_or("-"),
        receipt.position()
    );

    let outcome = tokio::time::timeout(CHAIN_TIMEOUT, paid).await;
    let stopped = stop(services, &brokers).await;
    let paid = match outcome {
        Ok(Ok(captured)) => {
            println!(
                "orders: {order_id} paid ({} cents, reference {}); {stopped}",
                captured.amount_cents, captured.provider_reference
            );
            true
        }
        _ => {
            println!("orders: {order_id} NOT paid; {stopped}");
            false
        }
    };

    // the in-memory exporter is behind a simple processor: each span is there once it ended
    let spans = telemetry.spans.get_finished_spans()?;
    println!();
    report::print_traces(&spans);
    println!();
    let series = report::print_metrics(telemetry.metrics.snapshot());
    println!();
    if !paid {
        return Err(format!(
            "order {order_id} was not paid within {} s: the chain orders -> payments -> ledger \
             -> orders stopped somewhere (see the log and the traces above)",
            CHAIN_TIMEOUT.as_secs()
        )
        .into());
    }
    let chain = report::check_chain(&spans, trace_id, &TOPICS)?;
    Ok(format!(
        "done: {order_id} went orders -> payments -> ledger -> orders on {address} in one trace \
         {trace_id} ({chain} spans), {series} metric series"
    ))
}

/// Stops every service's subscriptions, then disconnects their brokers.
async fn stop(services: [RunningService; 3], brokers: &[Arc<dyn Broker>]) -> String {
    let mut drained = 0;
    let mut abandoned = 0;
    for service in services {
        let report = service.stop().await;
        drained += report.drained.len();
        abandoned += report
            .drained
            .iter()
            .map(|(_, r)| r.abandoned)
            .sum::<usize>();
    }
    for broker in brokers {
        if let Err(error) = broker.disconnect().await {
            eprintln!("disconnecting failed: {}", event_core::error_chain(&error));
        }
    }
    format!("{drained} subscriptions drained, {abandoned} messages abandoned")
}

#[tokio::main]
async fn main() -> ExitCode {
    let telemetry = match init_telemetry() {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!(
                "error: cannot set up telemetry: {}",
                event_core::error_chain(&*error)
            );
            return ExitCode::FAILURE;
        }
    };
    let result = run(&telemetry).await;
    // flushes the OTLP batch exporter
    if let Err(error) = telemetry.provider.shutdown() {
        eprintln!("warning: the spans may not all be exported: {error}");
    }
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", event_core::error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}
