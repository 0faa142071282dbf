//! WebAssembly plugins: loading components, keeping warm instances, and
//! calling hooks within limits.
//!
//! A plugin is compiled once when the config loads and pre-instantiated.
//! Instances are pooled and reused across requests (`isolation = "pooled"`)
//! or made fresh for every call (`"per-request"`). Every call runs under the
//! plugin's limits (time by epoch, memory by a limiter, optional fuel); a
//! trap or breach throws the instance away and fails only that call.

mod bindings;
mod builtin;
mod engine;
mod failure;
mod hooks;
mod host;
mod output;
mod timer;
mod wasi;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, Trap};

use crate::config::{Config, Invalid, Isolation, OnFailure, PluginConfig, PluginLimits};

use bindings::exports::plumeway::plugin as exports;
use host::{HostState, MemoryLimitExceeded};

pub use engine::{COMPILE_COMMAND, compile_command, compile_in_child_processes, tick_with_signals};
pub use failure::Failure;
pub use hooks::{EndpointView, ErrorInfo, PickInput, RequestOutcome, ResponseOutcome};
pub use host::CallInfo;

/// The hooks a plugin can export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `rewrite`.
    Rewrite,
    /// `request-filter`.
    RequestFilter,
    /// `response-filter`.
    ResponseFilter,
    /// `error-handler`.
    ErrorHandler,
    /// `balancer`.
    Balancer,
}

/// Plugin output validation on arbitrary bytes, for the fuzz targets: the
/// first byte splits the rest into a path and a response.
#[doc(hidden)]
pub fn validate_for_fuzzing(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at(usize::from(split).min(rest.len()));
    if let Ok(path) = output::valid_path(String::from_utf8_lossy(a).into_owned()) {
        assert!(path.as_str().starts_with('/'));
    }
    let mut headers = Vec::new();
    for line in b.split(|&x| x == b'\n').take(16) {
        let (name, value) = line.split_at(line.iter().position(|&x| x == b':').unwrap_or(line.len()));
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let status = u16::from_le_bytes([a.first().copied().unwrap_or(0), b.first().copied().unwrap_or(0)]);
    let response = bindings::plumeway::plugin::types::Response {
        status,
        headers,
        body: b.to_vec(),
    };
    if let Ok(resp) = output::valid_response(response) {
        assert!((200..=599).contains(&resp.status().as_u16()));
        assert!(
            !resp
                .headers()
                .keys()
                .any(|k| host::MANAGED_HEADERS.contains(&k.as_str()))
        );
    }
}

/// Every plugin of a config, loaded.
#[derive(Debug, Default)]
pub struct Plugins {
    by_name: BTreeMap<String, Arc<Plugin>>,
}

/// One loaded plugin: its compiled component, which hooks it exports, and
/// its idle instances.
pub struct Plugin {
    name: Arc<str>,
    engine: &'static Engine,
    pre: InstancePre<HostState>,
    indices: Indices,
    config_json: String,
    limits: PluginLimits,
    isolation: Isolation,
    on_failure: OnFailure,
    needs: Needs,
    /// Each thread's warm instance. A thread makes one call at a time (a
    /// hook never awaits), so one is all it needs; taken and put back
    /// without a lock or an atomic update.
    local: thread_local::ThreadLocal<Cell<Option<Instance>>>,
    /// Idle instances no thread holds: the one made at load, and those
    /// a thread had no room for.
    idle: Mutex<Vec<Instance>>,
    stats: Stats,
}

/// The plugin's series, resolved once so that a call only counts.
#[derive(Debug)]
struct Stats {
    calls: crate::metrics::ShardedCounter,
    duration: crate::metrics::ShardedHistogram,
    failures: prometheus_client::metrics::family::Family<
        crate::metrics::PluginFailureLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    label: crate::metrics::Label,
    /// Failures of every kind, for the admin API (a family cannot be summed).
    failed: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn new(name: &Arc<str>, metrics: &crate::metrics::Metrics) -> Self {
        let labels = crate::metrics::PluginLabels { plugin: name.into() };
        Self {
            calls: metrics.plugin_calls.get_or_create_owned(&labels),
            duration: metrics.plugin_duration.get_or_create_owned(&labels),
            failures: metrics.plugin_failures.clone(),
            label: name.into(),
            failed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn record(&self, took: std::time::Duration, failure: Option<&Failure>) {
        self.calls.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(f) = failure {
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.failures
                .get_or_create(&crate::metrics::PluginFailureLabels {
                    plugin: self.label.clone(),
                    kind: f.kind(),
                })
                .inc();
        }
    }
}

/// Bodies a plugin asked for in `init`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The whole request body.
    pub request_body: bool,
    /// The whole response body.
    pub response_body: bool,
}

/// Where each exported hook lives in the component; `None` when the plugin
/// does not export it.
struct Indices {
    lifecycle: exports::lifecycle::GuestIndices,
    rewrite: Option<exports::rewrite::GuestIndices>,
    request: Option<exports::request_filter::GuestIndices>,
    response: Option<exports::response_filter::GuestIndices>,
    error: Option<exports::error_handler::GuestIndices>,
    balancer: Option<exports::balancer::GuestIndices>,
}

/// A live instance with its hooks looked up.
/// Boxed: a call moves its instance out of the pool, through the hook and
/// back, and a box is one word to move where the parts are ~250 bytes.
type Instance = Box<Warm>;

/// A plugin instance between calls.
struct Warm {
    store: Store<HostState>,
    hooks: Hooks,
    /// When the current call checked the instance out.
    since: std::time::Instant,
    /// Set while a call has the instance checked out.
    running: Option<engine::Running>,
}

/// An instance's exported hooks, looked up once when it is made.
struct Hooks {
    rewrite: Option<exports::rewrite::Guest>,
    request: Option<exports::request_filter::Guest>,
    response: Option<exports::response_filter::Guest>,
    error: Option<exports::error_handler::Guest>,
    balancer: Option<exports::balancer::Guest>,
}

/// Idle instances a plugin's shared pool keeps at most, beside the one
/// in each thread's slot; more are dropped after use.
const MAX_IDLE: usize = 64;

impl Plugins {
    /// Loads every `[plugins.NAME]` of a validated config: compiles it,
    /// checks its exports, and runs `init` with its config once so a bad
    /// config fails now rather than on the first request.
    pub async fn load(config: &Config, metrics: &crate::metrics::Metrics) -> Result<Self, Invalid> {
        let mut by_name = BTreeMap::new();
        for (name, pc) in &config.plugins {
            let plugin = Plugin::load(name, pc, config, metrics).await?;
            by_name.insert(name.clone(), Arc::new(plugin));
        }
        Ok(Self { by_name })
    }

    /// The plugin named `name`, checked to export `hook`; `key` is the
    /// config key that uses it, for the error.
    pub fn get(&self, name: &str, hook: Hook, key: &str) -> Result<Arc<Plugin>, Invalid> {
        let plugin = self
            .by_name
            .get(name)
            .ok_or_else(|| Invalid::new(key, format!("unknown plugin {name:?}")))?;
        if !plugin.exports(hook) {
            return Err(Invalid::new(
                key,
                format!(
                    "plugin {name:?} does not export {}, so it cannot be used as {} (it exports: {})",
                    hook.interface(),
                    hook.role(),
                    plugin.exported_hooks().join(", ")
                ),
            ));
        }
        Ok(Arc::clone(plugin))
    }

    /// The loaded plugins by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Plugin>)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// The interface every plugin exports, as a plugin author sees it in errors.
const LIFECYCLE: &str = "plumeway:plugin/lifecycle@0.1.0";

impl Hook {
    /// The WIT interface name, as a plugin author sees it in errors.
    pub fn interface(self) -> &'static str {
        match self {
            Self::Rewrite => "plumeway:plugin/rewrite@0.1.0",
            Self::RequestFilter => "plumeway:plugin/request-filter@0.1.0",
            Self::ResponseFilter => "plumeway:plugin/response-filter@0.1.0",
            Self::ErrorHandler => "plumeway:plugin/error-handler@0.1.0",
            Self::Balancer => "plumeway:plugin/balancer@0.1.0",
        }
    }

    fn role(self) -> &'static str {
        match self {
            Self::Rewrite => "a rewrite",
            Self::RequestFilter => "a request filter",
            Self::ResponseFilter => "a response filter",
            Self::ErrorHandler => "an error handler",
            Self::Balancer => "a balancer",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Rewrite => "rewrite",
            Self::RequestFilter => "request-filter",
            Self::ResponseFilter => "response-filter",
            Self::ErrorHandler => "error-handler",
            Self::Balancer => "balancer",
        }
    }
}

impl Plugin {
    async fn load(
        name: &str,
        pc: &PluginConfig,
        config: &Config,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, Invalid> {
        let key = format!("plugins.{name}");
        let wasm: std::borrow::Cow<'static, [u8]> = match (&pc.builtin, &pc.path) {
            (Some(builtin), _) => builtin::get(builtin).map(std::borrow::Cow::Borrowed).ok_or_else(|| {
                Invalid::new(
                    format!("{key}.builtin"),
                    format!(
                        "unknown built-in plugin {builtin:?} (built in: {})",
                        builtin::names().join(", ")
                    ),
                )
            })?,
            (None, Some(path)) => {
                let full = config.base_dir().join(path);
                std::fs::read(&full)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| Invalid::new(format!("{key}.path"), format!("cannot read {}: {e}", full.display())))?
            }
            (None, None) => return Err(Invalid::new(key, "a plugin needs `builtin` or `path`")),
        };
        let fuel = pc.limits.fuel.is_some();
        let engine = engine::engine(fuel).map_err(|e| Invalid::new(key.clone(), e))?;
        let component = engine::compile(engine, fuel, &wasm)
            .map_err(|e| Invalid::new(key.clone(), format!("not a valid plugin component: {e}")))?;
        let mut linker: Linker<HostState> = Linker::new(engine);
        let linked = wasi::add_to_linker(&mut linker)
            .and_then(|()| bindings::AnyPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s))
            // WASI a plugin cannot use here (files, sockets) traps if called.
            .and_then(|()| wasi::stub_files_and_sockets(&mut linker, engine, &component));
        linked.map_err(|e| Invalid::new(key.clone(), format!("cannot link the plugin: {e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            Invalid::new(
                key.clone(),
                format!("imports something plumeway does not provide: {e:#}"),
            )
        })?;
        let lifecycle = exports::lifecycle::GuestIndices::new(&pre).map_err(|_| {
            Invalid::new(
                key.clone(),
                format!("does not export {LIFECYCLE}: is it a plumeway plugin?"),
            )
        })?;
        let indices = Indices {
            lifecycle,
            rewrite: exports::rewrite::GuestIndices::new(&pre).ok(),
            request: exports::request_filter::GuestIndices::new(&pre).ok(),
            response: exports::response_filter::GuestIndices::new(&pre).ok(),
            error: exports::error_handler::GuestIndices::new(&pre).ok(),
            balancer: exports::balancer::GuestIndices::new(&pre).ok(),
        };
        let mut plugin = Self {
            name: name.into(),
            engine,
            pre,
            indices,
            config_json: pc.config_json(),
            limits: pc.limits.clone(),
            isolation: pc.isolation,
            on_failure: pc.on_failure,
            needs: Needs::default(),
            local: thread_local::ThreadLocal::new(),
            idle: Mutex::new(Vec::new()),
            stats: Stats::new(&name.into(), metrics),
        };
        // The first instance proves the config is acceptable, tells what
        // bodies the plugin needs, and stays warm for the first request.
        let (instance, needs) = plugin.instantiate().map_err(|f| match f {
            Failure::Returned { message } => {
                Invalid::new(format!("{key}.config"), format!("rejected by the plugin: {message}"))
            }
            other => Invalid::new(key.clone(), format!("failed to start: {other}")),
        })?;
        plugin.needs = needs;
        // Shared, not this thread's: the workers that will call it may be
        // other threads.
        if plugin.isolation == Isolation::Pooled
            && let Ok(mut idle) = plugin.idle.lock()
        {
            idle.push(instance);
        }
        Ok(plugin)
    }

    /// The plugin's name, as in `[plugins.NAME]`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Bodies the plugin asked for.
    pub fn needs(&self) -> Needs {
        self.needs
    }

    /// What a failure of this plugin does to the request.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// The plugin's limits.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Whether the plugin exports `hook`.
    pub fn exports(&self, hook: Hook) -> bool {
        let i = &self.indices;
        match hook {
            Hook::Rewrite => i.rewrite.is_some(),
            Hook::RequestFilter => i.request.is_some(),
            Hook::ResponseFilter => i.response.is_some(),
            Hook::ErrorHandler => i.error.is_some(),
            Hook::Balancer => i.balancer.is_some(),
        }
    }

    /// The hooks the plugin exports, by short name.
    pub fn exported_hooks(&self) -> Vec<&'static str> {
        [
            Hook::Rewrite,
            Hook::RequestFilter,
            Hook::ResponseFilter,
            Hook::ErrorHandler,
            Hook::Balancer,
        ]
        .into_iter()
        .filter(|h| self.exports(*h))
        .map(Hook::short)
        .collect()
    }

    /// A new instance, initialised with the plugin's config.
    fn instantiate(&self) -> Result<(Instance, Needs), Failure> {
        // The start function and `init` run guest code too.
        let _running = engine::Running::start();
        let mut store = Store::new(
            self.engine,
            HostState::new(Arc::clone(&self.name), self.limits.memory.as_usize()),
        );
        store.limiter(|s| &mut s.limiter);
        self.arm(&mut store, std::time::Instant::now())?;
        let instance = self.pre.instantiate(&mut store).map_err(|e| self.classify(e, &store))?;
        let started = |e: wasmtime::Error| Failure::Instantiate {
            message: format!("{e:#}"),
        };
        let lifecycle = self
            .indices
            .lifecycle
            .load(&mut store, &instance)
            .map_err(|e| started(other_shape(LIFECYCLE, e)))?;
        let hooks = self.indices.load(&mut store, &instance).map_err(started)?;
        self.arm(&mut store, std::time::Instant::now())?;
        let needs = match lifecycle.call_init(&mut store, &self.config_json) {
            Ok(Ok(flags)) => {
                use exports::lifecycle::Needs as N;
                Needs {
                    request_body: flags.contains(N::REQUEST_BODY),
                    response_body: flags.contains(N::RESPONSE_BODY),
                }
            }
            Ok(Err(message)) => return Err(Failure::Returned { message }),
            Err(e) => return Err(self.classify(e, &store)),
        };
        Ok((
            Box::new(Warm {
                store,
                hooks,
                since: std::time::Instant::now(),
                running: None,
            }),
            needs,
        ))
    }

    /// Sets the per-call limits on a store before entering the guest.
    fn arm(&self, store: &mut Store<HostState>, now: std::time::Instant) -> Result<(), Failure> {
        // The deadline counts from the epoch, which the ticker may have let
        // fall behind while no call ran.
        engine::catch_up(self.limits.fuel.is_some(), now);
        let ticks = self.limits.time.get().as_millis().div_ceil(engine::TICK.as_millis()) as u64;
        // +1: the tick in progress when the call starts may end at once.
        store.set_epoch_deadline(ticks + 1);
        if let Some(fuel) = self.limits.fuel {
            store.set_fuel(fuel).map_err(|e| Failure::Instantiate {
                message: format!("{e:#}"),
            })?;
        }
        Ok(())
    }

    /// An instance for one call: a warm one from the pool, else a new one.
    fn checkout(&self) -> Result<Instance, Failure> {
        let since = std::time::Instant::now();
        let warm = match self.isolation {
            Isolation::Pooled => self
                .local
                .get()
                .and_then(Cell::take)
                .or_else(|| self.idle.lock().ok()?.pop()),
            Isolation::PerRequest => None,
        };
        // The call's time limit is for the hook: a fresh instance's start
        // and `init` had limits of their own, so the hook's counts from
        // when they ended (after a reload every new pool starts cold, and
        // on a busy machine instantiating took most of a 20 ms limit).
        let (mut instance, armed) = match warm {
            Some(i) => (i, since),
            None => match self.instantiate() {
                Ok((i, _)) => (i, std::time::Instant::now()),
                Err(failure) => {
                    self.stats.record(since.elapsed(), Some(&failure));
                    return Err(failure);
                }
            },
        };
        instance.since = since;
        if let Err(failure) = self.arm(&mut instance.store, armed) {
            self.stats.record(since.elapsed(), Some(&failure));
            return Err(failure);
        }
        instance.running = Some(engine::Running::start());
        Ok(instance)
    }

    /// Calls made and failed so far, for the admin API.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.calls.get(),
            self.stats.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Returns a healthy instance to the pool.
    fn checkin(&self, instance: Instance) {
        if self.isolation == Isolation::PerRequest {
            return;
        }
        // Into this thread's slot; one already there (a call made while
        // another was out: not today's hooks) goes to the shared pool.
        if let Some(spare) = self.local.get_or_default().replace(Some(instance))
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(spare);
        }
    }

    /// Ends a call: pools the instance unless the failure poisoned it.
    fn finish<T>(&self, mut instance: Instance, result: Result<T, Failure>) -> Result<T, Failure> {
        instance.running = None;
        self.stats.record(instance.since.elapsed(), result.as_ref().err());
        match &result {
            Err(f) if f.poisons_instance() => drop(instance),
            _ => self.checkin(instance),
        }
        result
    }

    /// Turns a wasmtime error from a call into a [`Failure`].
    fn classify(&self, err: wasmtime::Error, store: &Store<HostState>) -> Failure {
        if err.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return Failure::Memory {
                limit: self.limits.memory,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout {
                limit: self.limits.time,
            },
            Some(Trap::OutOfFuel) => Failure::Fuel {
                limit: self.limits.fuel.unwrap_or(0),
            },
            Some(trap) => {
                let mut message = trap.to_string();
                if let Some(line) = store.data().stderr_tail() {
                    message = format!("{message} ({line})");
                }
                Failure::Trap { message }
            }
            None => Failure::Trap {
                // One line for the log: the cause, without the wasm
                // backtrace wasmtime wraps it in.
                message: err.root_cause().to_string(),
            },
        }
    }
}

impl Indices {
    fn load(&self, store: &mut Store<HostState>, instance: &wasmtime::component::Instance) -> wasmtime::Result<Hooks> {
        // Exports are found by name when the plugin loads; their types are
        // checked here.
        let shape = |hook: Hook| move |e| other_shape(hook.interface(), e);
        Ok(Hooks {
            rewrite: self
                .rewrite
                .as_ref()
                .map(|x| x.load(&mut *store, instance).map_err(shape(Hook::Rewrite)))
                .transpose()?,
            request: self
                .request
                .as_ref()
                .map(|x| x.load(&mut *store, instance).map_err(shape(Hook::RequestFilter)))
                .transpose()?,
            response: self
                .response
                .as_ref()
                .map(|x| x.load(&mut *store, instance).map_err(shape(Hook::ResponseFilter)))
                .transpose()?,
            error: self
                .error
                .as_ref()
                .map(|x| x.load(&mut *store, instance).map_err(shape(Hook::ErrorHandler)))
                .transpose()?,
            balancer: self
                .balancer
                .as_ref()
                .map(|x| x.load(&mut *store, instance).map_err(shape(Hook::Balancer)))
                .transpose()?,
        })
    }
}

/// An export found by name whose functions do not have the contract's
/// types: the plugin was built against another version of the contract
/// (a plugin not rebuilt after it changed), which the error says.
fn other_shape(interface: &str, e: wasmtime::Error) -> wasmtime::Error {
    e.context(format!(
        "it exports {interface}, but not as this plumeway's contract has it: it was built against another \
         version of the contract; rebuild it against this plumeway's plumeway-sdk"
    ))
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("hooks", &self.exported_hooks())
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}
