//! The `plumeway` command line: `run`, `check`, `demo` and `register`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;
use crate::server::{Server, StartError};

/// plumeway: a reverse proxy and API gateway extended by WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(
    name = "plumeway",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  plumeway demo                  run the quickstart (demo backends + proxy on 127.0.0.1:8080)\n  plumeway check plumeway.toml   validate a config and print what it sets up\n  plumeway run plumeway.toml     serve a config (same as `plumeway plumeway.toml`)\n  plumeway register plumeway.toml --upstream users --url http://127.0.0.1:9001\n                                 keep an instance in the upstream's etcd or Consul registry\n\nLog level: --log LEVEL or PLUMEWAY_LOG (e.g. \"info\", \"debug\", \"plumeway::access=off\")."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file to serve (shorthand for `plumeway run CONFIG`).
    config: Option<PathBuf>,
    /// Log filter: a level (error, warn, info, debug, trace) or
    /// tracing directives. Overrides PLUMEWAY_LOG.
    #[arg(long, global = true, value_name = "LEVEL")]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a config file until SIGINT or SIGTERM.
    Run {
        /// Path to the TOML config.
        config: PathBuf,
    },
    /// Validate a config file and print a summary, without serving it.
    Check {
        /// Path to the TOML config.
        config: PathBuf,
    },
    /// Run the quickstart: two demo backends and the proxy in front of them.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin listener (dashboard, metrics) listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Register an instance with an upstream's discovery back end (etcd or
    /// Consul) and keep it registered until SIGINT or SIGTERM, then
    /// deregister it. If this process dies instead, the registry drops the
    /// instance after --ttl.
    Register {
        /// Path to the TOML config that names the upstream.
        config: PathBuf,
        /// The upstream whose `discovery` back end to register with.
        #[arg(long)]
        upstream: String,
        /// Where the instance serves, e.g. http://127.0.0.1:9001.
        #[arg(long)]
        url: String,
        /// Instance ID (the etcd key under the prefix, Consul's service
        /// ID); defaults to one made from the URL.
        #[arg(long)]
        id: Option<String>,
        /// Relative share of traffic.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// How long the registry keeps the instance once renewals stop.
        #[arg(long, default_value = "10s")]
        ttl: crate::config::Duration,
        /// Metadata as KEY=VALUE; repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Compiles one plugin component from stdin to stdout: plumeway runs
    /// this in a child process for every plugin it loads.
    #[command(name = crate::plugin::COMPILE_COMMAND, hide = true)]
    CompilePlugin {
        /// For the engine that meters fuel.
        #[arg(long)]
        fuel: bool,
    },
}

/// Runs the command line; the `plumeway` binary is just this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let command = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Command::Run { config },
        (None, None) => {
            eprintln!("plumeway: no config given. Try `plumeway demo`, or `plumeway --help`.");
            return ExitCode::from(2);
        }
    };
    // A compiler child runs no plugin: it needs neither.
    if !matches!(command, Command::CompilePlugin { .. }) {
        if let Ok(exe) = std::env::current_exe() {
            crate::plugin::compile_in_child_processes(exe);
        }
        crate::plugin::tick_with_signals();
    }
    match command {
        Command::CompilePlugin { fuel } => crate::plugin::compile_command(fuel),
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => check(&config, cfg),
            Err(err) => config_failed(&err),
        },
        Command::Run { config } => match Config::load(&config) {
            Ok(cfg) => run(cfg, None),
            Err(err) => config_failed(&err),
        },
        Command::Demo { listen, admin } => match crate::demo::config(listen, admin) {
            Ok(cfg) => run(cfg, Some((listen, admin))),
            Err(err) => config_failed(&err),
        },
        Command::Register {
            config,
            upstream,
            url,
            id,
            weight,
            ttl,
            meta,
        } => match Config::load(&config) {
            Ok(cfg) => match registration(&cfg, &upstream, &url, id, weight, ttl, &meta) {
                Ok((discovery, instance)) => register(&discovery, &instance),
                Err(message) => {
                    eprintln!("plumeway: {message}");
                    ExitCode::from(2)
                }
            },
            Err(err) => config_failed(&err),
        },
    }
}

/// The upstream's discovery config and the instance to register, from the
/// command line.
fn registration(
    config: &Config,
    upstream: &str,
    url: &str,
    id: Option<String>,
    weight: u32,
    ttl: crate::config::Duration,
    meta: &[String],
) -> Result<(crate::config::DiscoveryConfig, crate::discovery::Registration), String> {
    let u = config
        .upstreams
        .get(upstream)
        .ok_or_else(|| format!("the config has no upstream {upstream:?}"))?;
    let discovery = u
        .discovery
        .clone()
        .ok_or_else(|| format!("upstream {upstream:?} lists its targets; it has no discovery back end"))?;
    let url = crate::config::TargetUrl::parse(url)?;
    if weight == 0 {
        return Err("--weight must be at least 1".into());
    }
    let metadata = meta
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--meta {kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    // An ID from the address: stable across restarts of the same instance.
    let id = id.unwrap_or_else(|| format!("{upstream}-{}", url.authority).replace([':', '[', ']'], "-"));
    Ok((
        discovery,
        crate::discovery::Registration {
            id,
            url,
            weight,
            metadata,
            ttl: ttl.get(),
        },
    ))
}

fn register(discovery: &crate::config::DiscoveryConfig, instance: &crate::discovery::Registration) -> ExitCode {
    use crate::config::DiscoveryConfig;
    let runtime = match runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        match discovery {
            DiscoveryConfig::Etcd(c) => stay_registered(crate::discovery::Etcd::new(c), instance).await,
            DiscoveryConfig::Consul(c) => stay_registered(crate::discovery::Consul::new(c), instance).await,
            DiscoveryConfig::File { .. } | DiscoveryConfig::Dns(_) => {
                eprintln!("plumeway: {discovery} keeps no registry; register works with etcd and Consul");
                ExitCode::from(2)
            }
        }
    })
}

async fn stay_registered<D: crate::discovery::Discovery>(
    backend: D,
    instance: &crate::discovery::Registration,
) -> ExitCode {
    if let Err(err) = backend.register(instance).await {
        eprintln!("plumeway: cannot register {instance}: {err}");
        return ExitCode::FAILURE;
    }
    println!("registered {instance} in {}; Ctrl-C deregisters it", D::KIND);
    shutdown_signal().await;
    match backend.deregister(&instance.id).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("plumeway: cannot deregister {instance}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, demo: Option<(SocketAddr, SocketAddr)>) -> ExitCode {
    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let runtime = match runtime(workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        if demo.is_some()
            && let Err(err) = crate::demo::start_backends(&config).await
        {
            eprintln!("plumeway: cannot start the demo backends: {err}");
            return ExitCode::FAILURE;
        }
        let server = match Server::bind(&config).await {
            Ok(s) => s,
            Err(StartError::Config(err)) => return config_failed(&err),
            Err(err) => {
                eprintln!("plumeway: {err}");
                return ExitCode::FAILURE;
            }
        };
        if let Some((addr, admin)) = demo {
            println!("{}", crate::demo::banner(addr, admin));
        }
        server.serve(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// `plumeway check`: everything `run` does before it listens, plugins
/// compiled and initialised included, then a summary.
fn check(path: &Path, config: Config) -> ExitCode {
    let runtime = match runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(Proxy::build(&config)) {
        Ok(proxy) => {
            print!("{}", summary(path, &config, &proxy));
            ExitCode::SUCCESS
        }
        Err(err) => config_failed(&err),
    }
}

/// A tokio runtime with `workers` threads. One is a current-thread
/// runtime: no work stealing and no wake-ups across threads, which is what
/// one core can use best.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if workers > 1 {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|err| {
        eprintln!("plumeway: cannot start the runtime: {err}");
        ExitCode::FAILURE
    })
}

fn config_failed(err: &ConfigError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(2)
}

fn init_logging(flag: Option<&str>) {
    let directives = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("PLUMEWAY_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|err| {
        eprintln!("plumeway: ignoring log filter {directives:?}: {err}");
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on the first SIGINT or SIGTERM. Both are caught from the
/// call, not from the first poll: the server says it is listening before
/// it polls this, and a SIGTERM sent then (a supervisor, a test) would
/// otherwise meet the default action and end the process at once, with no
/// graceful shutdown. That happened when the main thread was slow to get
/// from its "listening" line to the wait on this.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let caught = signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
        async move {
            match caught {
                Ok((mut term, mut int)) => tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                },
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch SIGTERM and SIGINT; only Ctrl-C will stop plumeway");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The one-screen summary `plumeway check` prints.
fn summary(path: &Path, config: &Config, proxy: &Proxy) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let listen: Vec<String> = config.server.listen.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "listeners: {}", listen.join(", "));
    let _ = match config.server.workers {
        Some(1) => writeln!(out, "workers: 1 (one thread)"),
        Some(n) => writeln!(out, "workers: {n} threads"),
        None => writeln!(out, "workers: one thread per CPU"),
    };
    if let Some(tls) = &config.server.tls {
        let listen: Vec<String> = tls.listen.iter().map(ToString::to_string).collect();
        let names: Vec<&str> = tls
            .certificates
            .iter()
            .flat_map(|c| c.names.iter().map(String::as_str))
            .collect();
        let _ = writeln!(
            out,
            "tls listeners: {} ({} certificates; SNI names: {})",
            listen.join(", "),
            tls.certificates.len(),
            if names.is_empty() {
                "-".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    match &config.admin {
        Some(a) => {
            let watch = if a.watch_config {
                ", reloads when the file changes"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "admin: http://{}/ (dashboard, /metrics, POST /reload){watch}",
                a.listen
            );
        }
        None => {
            let _ = writeln!(out, "admin: off (add [admin] for metrics and the dashboard)");
        }
    }
    let log = &config.access_log;
    let _ = match (log.enabled, &log.path) {
        (false, _) => writeln!(out, "access log: off"),
        (true, Some(p)) => writeln!(out, "access log: {:?} to {}", log.format, p.display()),
        (true, None) => writeln!(out, "access log: {:?}", log.format),
    };
    let limits = &config.server.limits;
    let _ = writeln!(
        out,
        "limits: header bytes {}, headers {}, body {}; header read timeout {}",
        limits.max_header_bytes, limits.max_headers, limits.max_body, config.server.timeouts.header_read
    );
    let _ = writeln!(out, "routes ({}):", config.routes.len());
    for (i, r) in config.routes.iter().enumerate() {
        let m = &r.matcher;
        let mut cond = vec![format!("path {}", m.path_prefix)];
        if let Some(h) = &m.host {
            cond.push(format!("host {h}"));
        }
        if let Some(ms) = &m.methods {
            cond.push(format!("methods {}", ms.join(",")));
        }
        for (k, v) in &m.headers {
            cond.push(format!("header {k}={v}"));
        }
        let _ = writeln!(
            out,
            "  {:<20} {} -> {}",
            config.route_name(i),
            cond.join(" "),
            r.upstream
        );
        let mut chain = Vec::new();
        if let Some(p) = &r.rewrite {
            chain.push(format!("rewrite {p}"));
        }
        if !r.request.is_empty() {
            chain.push(format!("request [{}]", r.request.join(", ")));
        }
        if !r.response.is_empty() {
            chain.push(format!("response [{}]", r.response.join(", ")));
        }
        if let Some(p) = &r.on_error {
            chain.push(format!("on_error {p}"));
        }
        if !chain.is_empty() {
            let _ = writeln!(out, "  {:<20} plugins: {}", "", chain.join("; "));
        }
    }
    let _ = writeln!(out, "upstreams ({}):", config.upstreams.len());
    for (name, u) in &config.upstreams {
        let targets: Vec<String> = u
            .targets
            .iter()
            .map(|t| {
                let mut s = t.url.to_string();
                if t.weight != 1 {
                    let _ = write!(s, " weight {}", t.weight);
                }
                if t.down {
                    s.push_str(" (down)");
                }
                s
            })
            .collect();
        let _ = writeln!(
            out,
            "  {name:<20} {:?}, connect {}, response header {}: {}",
            u.balancer,
            u.timeouts.connect,
            u.timeouts.response_header,
            match &u.discovery {
                Some(discovery) => discovery.to_string(),
                None => targets.join(", "),
            }
        );
    }
    let _ = writeln!(out, "plugins ({}):", config.plugins.len());
    for (name, plugin) in proxy.plugins().iter() {
        let pc = &config.plugins[name];
        let source = match (&pc.builtin, &pc.path) {
            (Some(b), _) => format!("builtin {b}"),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "-".to_owned(),
        };
        let l = plugin.limits();
        let _ = writeln!(
            out,
            "  {name:<20} {source}; hooks {}; memory {}, time {}{}; {:?}",
            plugin.exported_hooks().join(","),
            l.memory,
            l.time,
            l.fuel.map(|f| format!(", fuel {f}")).unwrap_or_default(),
            pc.isolation
        );
    }
    out
}
