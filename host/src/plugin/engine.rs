//! The wasmtime engines: one per process (two if some plugin uses fuel),
//! with the pooling allocator and an epoch ticker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_PLUGIN_MEMORY;

/// How often the epoch advances while a call is running; a call's time
/// limit is counted in ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// How long the ticker sleeps when no call was running as it last looked.
/// Each wake-up is a context switch: at one a millisecond the ticker took
/// 2.4% of a core under load, 0.7 µs per request with the 3-plugin chain
/// (bench/RESULTS.md, session 10). Calls are usually over in microseconds,
/// so the ticker mostly sleeps this long. A call that runs long is seen
/// within this much of its start, and stopped within a tick of its limit
/// from then on.
pub(super) const IDLE_TICK: Duration = Duration::from_millis(10);

/// For profiling only (bench/profile.py sets it to `1`): each plugin's
/// compiled functions are named in /tmp/perf-PID.map, which `perf report`
/// reads, so time inside a plugin is not one anonymous `[JIT]` lump.
const PERF_MAP: &str = "PLUMEWAY_PERF_MAP";

/// For profiling only (bench/instructions.py sets it): the pool's number of
/// slots of each kind. Each memory slot reserves gigabytes of address
/// space, more than valgrind can map for a thousand; a handful is enough
/// for a benchmark's chain. The compiled code is the same.
const POOL_SLOTS: &str = "PLUMEWAY_POOL_SLOTS";

/// Calls running now, in any engine.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts a call into a plugin as running until dropped, so the ticker
/// ticks every [`TICK`] while it lasts.
#[derive(Debug)]
pub(crate) struct Running(());

impl Running {
    pub(crate) fn start() -> Self {
        RUNNING.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An engine's epoch as a clock: its value is the time since `start` in
/// ticks. The ticker brings it up to date when it wakes, and so does every
/// call just before it sets its deadline, which is then counted from the
/// true time even when the ticker has slept for [`IDLE_TICK`].
#[derive(Debug)]
struct Clock {
    start: Instant,
    /// Ticks added to the epoch so far.
    ticks: AtomicU64,
}

impl Clock {
    fn catch_up(&self, engine: &Engine, now: Instant) {
        let due = (now.saturating_duration_since(self.start).as_nanos() / TICK.as_nanos()) as u64;
        let mut seen = self.ticks.load(Ordering::Relaxed);
        // Each tick is claimed once, by whoever wins it, ticker or call: the
        // epoch never runs ahead of the time.
        while seen < due {
            match self
                .ticks
                .compare_exchange_weak(seen, seen + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    engine.increment_epoch();
                    seen += 1;
                }
                Err(current) => seen = current,
            }
        }
    }
}

/// An engine and its epoch clock.
struct Ticking {
    engine: Engine,
    clock: Arc<Clock>,
}

static PLAIN: OnceLock<Result<Ticking, String>> = OnceLock::new();
static FUELED: OnceLock<Result<Ticking, String>> = OnceLock::new();

fn ticking(fuel: bool) -> Result<&'static Ticking, String> {
    let cell = if fuel { &FUELED } else { &PLAIN };
    cell.get_or_init(|| build(fuel)).as_ref().map_err(Clone::clone)
}

/// The engine for plugins without (`fuel = false`) or with a fuel limit.
/// Fuel metering slows every call, so only plugins that ask for it pay.
pub(crate) fn engine(fuel: bool) -> Result<&'static Engine, String> {
    ticking(fuel).map(|t| &t.engine)
}

/// Brings the epoch of the engine for `fuel` up to `now`, before a call
/// sets its deadline.
pub(crate) fn catch_up(fuel: bool, now: Instant) {
    if let Ok(t) = ticking(fuel) {
        t.clock.catch_up(&t.engine, now);
    }
}

fn build(fuel: bool) -> Result<Ticking, String> {
    let mut pool = PoolingAllocationConfig::new();
    let slots = std::env::var(POOL_SLOTS)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1000);
    // A Rust wasip2 component is several core instances; slots are cheap
    // address space until used.
    pool.total_component_instances(slots)
        .total_core_instances(4 * slots)
        .total_memories(slots)
        .total_tables(2 * slots)
        .total_stacks(slots)
        .max_memory_size(MAX_PLUGIN_MEMORY.as_usize())
        // Measured: keeping a little memory resident and scanning page maps
        // takes a fresh instance from ~30 µs to ~10 µs.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .max_wasm_stack(512 << 10)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if std::env::var_os(PERF_MAP).is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(|e| format!("cannot start the WebAssembly engine: {e}"))?;
    let clock = Arc::new(Clock {
        start: Instant::now(),
        ticks: AtomicU64::new(0),
    });
    if BY_SIGNAL.load(Ordering::Relaxed) && *SIGNAL_TIMER.get_or_init(start_timer) {
        return Ok(Ticking { engine, clock });
    }
    let (ticker, ticker_clock) = (engine.weak(), Arc::clone(&clock));
    std::thread::Builder::new()
        .name(if fuel { "plumeway-epoch-fuel" } else { "plumeway-epoch" }.into())
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                ticker_clock.catch_up(&engine, Instant::now());
                drop(engine);
                std::thread::sleep(next_tick());
            }
        })
        .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
    Ok(Ticking { engine, clock })
}

/// How long until the next tick: [`TICK`] while a call runs, else
/// [`IDLE_TICK`].
pub(super) fn next_tick() -> Duration {
    if RUNNING.load(Ordering::Relaxed) > 0 {
        TICK
    } else {
        IDLE_TICK
    }
}

/// Brings every engine's epoch up to `now`; the timer's signal handler
/// calls it, so it only loads and updates atomics.
pub(super) fn tick(now: Instant) {
    for cell in [&PLAIN, &FUELED] {
        if let Some(Ok(t)) = cell.get() {
            t.clock.catch_up(&t.engine, now);
        }
    }
}

/// Whether `tick_with_signals` was asked for.
static BY_SIGNAL: AtomicBool = AtomicBool::new(false);

/// Whether the timer ticks the epochs, once the first engine asked.
static SIGNAL_TIMER: OnceLock<bool> = OnceLock::new();

/// From now on, advance the epochs from a POSIX timer's signal rather than
/// from a thread (see `timer.rs` for why). For the `plumeway` binary only,
/// whose blocking calls all restart or expect `EINTR`; if the timer cannot
/// be set up, the thread ticks as before.
pub fn tick_with_signals() {
    BY_SIGNAL.store(true, Ordering::Relaxed);
}

fn start_timer() -> bool {
    match super::timer::start() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot tick plugin time limits with a timer signal ({e}); using a thread");
            false
        }
    }
}

/// Compiles `wasm`, reusing an earlier compilation of the same bytes (a
/// reload, or tests that start many proxies with the same plugins).
pub(crate) fn compile(engine: &Engine, fuel: bool, wasm: &[u8]) -> Result<Component, String> {
    /// Compiled components by (engine, hash of the bytes, length).
    type Cache = HashMap<(bool, u64, usize), Component>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let key = (fuel, hash(wasm), wasm.len());
    if let Some(c) = CACHE.lock().ok().and_then(|c| c.as_ref()?.get(&key).cloned()) {
        return Ok(c);
    }
    let component = match COMPILER.get().map(|exe| in_child(exe, engine, fuel, wasm)) {
        Some(Ok(component)) => component,
        Some(Err(Child::Rejected(message))) => return Err(message),
        broken_or_unset => {
            if let Some(Err(Child::Broken(why))) = broken_or_unset {
                tracing::warn!("compiling a plugin in a child process failed ({why}); compiling it in this one");
            }
            Component::new(engine, wasm).map_err(|e| format!("{e:#}"))?
        }
    };
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_with(HashMap::new).insert(key, component.clone());
    }
    Ok(component)
}

/// The executable that compiles plugins for this process, when set.
static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// The hidden subcommand of the `plumeway` binary (cli.rs names it with
/// this) that compiles one plugin: the component on stdin, wasmtime's
/// precompiled artifact on stdout.
pub const COMPILE_COMMAND: &str = "compile-plugin";

/// Exit code of `compile-plugin` for bytes that are not a valid
/// component; stderr then holds the reason.
const REJECTED: i32 = 3;

/// From now on, compile plugins in a child process running `exe` (the
/// running `plumeway` binary) with its hidden `compile-plugin` subcommand.
///
/// Why: Cranelift is most of what a plugin costs a long-running proxy in
/// memory. Compiling in this process touches ~9 MiB of the binary's
/// compiler code and leaves several MiB of compiler scratch on the heap
/// (wasmtime keeps its compiler contexts), all resident for the life of
/// the process; a child takes that with it when it exits. A compiler crash
/// on a hostile component also ends the child, not the proxy.
pub fn compile_in_child_processes(exe: PathBuf) {
    let _ = COMPILER.set(exe);
}

/// Why a child compile gave no component.
enum Child {
    /// The component is invalid: the compiler's message.
    Rejected(String),
    /// The child could not do its job (not started, killed, incompatible
    /// output); compiling in-process still can.
    Broken(String),
}

fn in_child(exe: &Path, engine: &Engine, fuel: bool, wasm: &[u8]) -> Result<Component, Child> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut command = Command::new(exe);
    // A compiler loads no code to name, and its engine would leave an
    // empty map file behind.
    command.arg(COMPILE_COMMAND).env_remove(PERF_MAP);
    if fuel {
        command.arg("--fuel");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Child::Broken(format!("cannot start {}: {e}", exe.display())))?;
    let mut stdin = child.stdin.take().ok_or_else(|| Child::Broken("no stdin".into()))?;
    // Written whole before stdout is read, from this thread: the child
    // reads all of stdin before it writes anything (`compile_command`), so
    // neither side can block the other on a full pipe. Not from a thread
    // of its own: the first thread a process creates makes each of its
    // system calls dearer for good (see timer.rs). A failed write (the
    // child died early) shows in the child's exit status.
    let _ = stdin.write_all(wasm);
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| Child::Broken(format!("waiting for it: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    match output.status.code() {
        Some(0) => {}
        Some(REJECTED) => return Err(Child::Rejected(stderr)),
        _ => return Err(Child::Broken(format!("{}: {stderr}", output.status))),
    }
    deserialize(engine, &output.stdout).map_err(|e| Child::Broken(format!("{e:#}")))
}

#[expect(unsafe_code, reason = "the one place a precompiled plugin is loaded")]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the bytes to come from its own
    // `precompile_component` and not to have been tampered with. They come
    // straight from the pipe of a child running this same executable's
    // `compile-plugin` (`compile_command` below), never from a file or the
    // network; wasmtime also checks its version and the engine settings
    // and refuses an artifact made for another build or configuration.
    unsafe { Component::deserialize(engine, artifact) }
}

/// The body of the hidden `compile-plugin` subcommand: the component on
/// stdin is compiled with the engine this process would use and written
/// to stdout. Exit code 0, 3 with the reason on stderr, or 1 when stdin,
/// stdout or the engine fails.
pub fn compile_command(fuel: bool) -> std::process::ExitCode {
    use std::io::{Read, Write};
    // All of stdin is read before anything is written: `in_child` relies
    // on it to write the component without a thread of its own.
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut wasm) {
        eprintln!("cannot read the plugin from stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let engine = match engine(fuel) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match engine.precompile_component(&wasm).map_err(|e| format!("{e:#}")) {
        Ok(bytes) => match std::io::stdout().lock().write_all(&bytes) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the compiled plugin: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprint!("{message}");
            std::process::ExitCode::from(REJECTED as u8)
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The epoch is the time in ticks: however long the ticker slept, it
    /// catches up at once, and never runs ahead when asked twice or asked
    /// about a moment already counted.
    #[test]
    fn the_epoch_catches_up_with_the_time() {
        let engine = Engine::default();
        let start = Instant::now();
        let clock = Clock {
            start,
            ticks: AtomicU64::new(0),
        };
        clock.catch_up(&engine, start + Duration::from_micros(25_400));
        assert_eq!(clock.ticks.load(Ordering::Relaxed), 25);
        clock.catch_up(&engine, start + Duration::from_millis(25));
        clock.catch_up(&engine, start + Duration::from_millis(3));
        assert_eq!(clock.ticks.load(Ordering::Relaxed), 25);
        clock.catch_up(&engine, start + Duration::from_millis(26));
        assert_eq!(clock.ticks.load(Ordering::Relaxed), 26);
    }
}
