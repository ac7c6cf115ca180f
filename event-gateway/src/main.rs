//! `event-gateway`: serves the Redis protocol in front of the broker `EVENT_BROKER` names.
//!
//! ```text
//! event-gateway [--listen 127.0.0.1:6380] [options]
//! ```
//!
//! Run `event-gateway --help` for the options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use event_gateway::{Gateway, GatewayConfig, TypedTopics};

const HELP: &str = "\
event-gateway: Redis clients publish and consume events through any broker.

USAGE: event-gateway [OPTIONS]

The broker comes from EVENT_BROKER (memory:// when unset): kafka://, amqp://, nats://, memory://.

OPTIONS:
  --listen ADDR            address to serve on [default: 127.0.0.1:6380]; port 0 picks one
  --password PASSWORD      require AUTH (also EVENT_GATEWAY_PASSWORD)
  --max-bulk BYTES         longest argument of a request [default: 16777216]
  --source NAME            ce_source of messages published without one [default: event-gateway]
  --group-window N         messages a queue group holds at most, read or waiting [default: 256]
  --max-groups N           queue groups the gateway joins at most [default: 1024]
  --max-subscriptions N    SUBSCRIBE subscriptions of all connections at most [default: 4096]
  --subscriber-buffer N    messages waiting for a slow SUBSCRIBE connection [default: 1024]
  --reclaim-after SECONDS  how long messages read on a closed connection stay its consumer's
                           before the next reader gets them [default: 10]
  --drain-timeout SECONDS  time to finish replies and drain on SIGTERM [default: 5]
  --descriptor-set FILE    a FileDescriptorSet (imports included) with the typed topics' types
  --proto FILE             a .proto file with the typed topics' types (repeatable)
  --proto-path DIR         where --proto files and their imports are found (repeatable)
  --typed TOPIC=TYPE       messages on TOPIC must be the protobuf TYPE (repeatable)
  -h, --help               this text

It prints `listening <address>` on stdout once it serves.";

/// A command line that cannot be served.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{option} needs a value")]
    Missing { option: String },
    #[error("invalid value {value:?} for {option}: {reason}")]
    Invalid {
        option: String,
        value: String,
        reason: String,
    },
    #[error("unknown option {option} (see --help)")]
    Unknown { option: String },
}

struct Cli {
    listen: SocketAddr,
    config: GatewayConfig,
}

fn parse(
    mut args: impl Iterator<Item = String>,
) -> Result<Option<Cli>, Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:6380".parse()?;
    let mut config = GatewayConfig::new();
    if let Ok(password) = std::env::var("EVENT_GATEWAY_PASSWORD")
        && !password.is_empty()
    {
        config = config.password(password);
    }
    let mut descriptor_sets = Vec::new();
    let mut protos = Vec::new();
    let mut proto_paths = Vec::new();
    let mut typed = Vec::new();
    while let Some(option) = args.next() {
        if option == "-h" || option == "--help" {
            println!("{HELP}");
            return Ok(None);
        }
        let (name, inline) = match option.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (option.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| CliError::Missing {
                    option: name.clone(),
                })
        };
        let invalid = |value: &str, reason: &dyn std::fmt::Display| CliError::Invalid {
            option: name.clone(),
            value: value.to_owned(),
            reason: reason.to_string(),
        };
        match name.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| invalid(&v, &e))?;
            }
            "--password" => config = config.password(value()?),
            "--max-bulk" => {
                let v = value()?;
                config = config.max_bulk(v.parse().map_err(|e| invalid(&v, &e))?);
            }
            "--source" => config = config.source(value()?),
            "--group-window" => {
                let v = value()?;
                config = config.group_window(v.parse().map_err(|e| invalid(&v, &e))?);
            }
            "--max-groups" => {
                let v = value()?;
                config = config.max_groups(v.parse().map_err(|e| invalid(&v, &e))?);
            }
            "--max-subscriptions" => {
                let v = value()?;
                config = config.max_subscriptions(v.parse().map_err(|e| invalid(&v, &e))?);
            }
            "--subscriber-buffer" => {
                let v = value()?;
                config = config.subscriber_buffer(v.parse().map_err(|e| invalid(&v, &e))?);
            }
            "--drain-timeout" => {
                let v = value()?;
                let seconds: f64 = v.parse().map_err(|e| invalid(&v, &e))?;
                let timeout = Duration::try_from_secs_f64(seconds).map_err(|e| invalid(&v, &e))?;
                config = config.drain_timeout(timeout);
            }
            "--reclaim-after" => {
                let v = value()?;
                let seconds: f64 = v.parse().map_err(|e| invalid(&v, &e))?;
                let delay = Duration::try_from_secs_f64(seconds).map_err(|e| invalid(&v, &e))?;
                config = config.reclaim_after(delay);
            }
            "--descriptor-set" => descriptor_sets.push(PathBuf::from(value()?)),
            "--proto" => protos.push(PathBuf::from(value()?)),
            "--proto-path" => proto_paths.push(PathBuf::from(value()?)),
            "--typed" => {
                let v = value()?;
                let (topic, ty) = v
                    .split_once('=')
                    .ok_or_else(|| invalid(&v, &"expected TOPIC=TYPE"))?;
                typed.push((topic.to_owned(), ty.to_owned()));
            }
            _ => return Err(CliError::Unknown { option }.into()),
        }
    }
    let mut topics = TypedTopics::new();
    for path in &descriptor_sets {
        topics = topics.add_descriptor_set_file(path)?;
    }
    if !protos.is_empty() {
        if proto_paths.is_empty() {
            proto_paths.push(PathBuf::from("."));
        }
        topics = topics.add_proto_files(&protos, &proto_paths)?;
    }
    for (topic, ty) in typed {
        topics = topics.topic(topic, ty)?;
    }
    Ok(Some(Cli {
        listen,
        config: config.typed_topics(topics),
    }))
}

/// An error and its sources on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let broker = event_core::broker::from_env()?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, broker = %broker.address(), "serving");
    println!("listening {address}");
    let gateway = Gateway::new(broker, cli.config);
    gateway.serve(listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match parse(std::env::args().skip(1)) {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("event-gateway: {}", chain(&*error));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("event-gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("event-gateway: {}", chain(&*error));
            ExitCode::FAILURE
        }
    }
}
