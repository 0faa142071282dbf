//! The wasmtime engines: one per process (two if some plugin uses fuel),
//! with the pooling allocator and an epoch ticker.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_PLUGIN_MEMORY;

/// How often the epoch advances; a call's time limit is counted in ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

static PLAIN: OnceLock<Result<Engine, String>> = OnceLock::new();
static FUELED: OnceLock<Result<Engine, String>> = OnceLock::new();

/// The engine for plugins without (`fuel = false`) or with a fuel limit.
/// Fuel metering slows every call, so only plugins that ask for it pay.
pub(crate) fn engine(fuel: bool) -> Result<&'static Engine, String> {
    let cell = if fuel { &FUELED } else { &PLAIN };
    cell.get_or_init(|| build(fuel)).as_ref().map_err(Clone::clone)
}

fn build(fuel: bool) -> Result<Engine, String> {
    let mut pool = PoolingAllocationConfig::new();
    // A Rust wasip2 component is several core instances; slots are cheap
    // address space until used.
    pool.total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(1000)
        .total_tables(2000)
        .total_stacks(1000)
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
    let engine = Engine::new(&config).map_err(|e| format!("cannot start the WebAssembly engine: {e}"))?;
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name(if fuel { "plumeway-epoch-fuel" } else { "plumeway-epoch" }.into())
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
    Ok(engine)
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
    let component = Component::new(engine, wasm).map_err(|e| format!("{e:#}"))?;
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_with(HashMap::new).insert(key, component.clone());
    }
    Ok(component)
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}
