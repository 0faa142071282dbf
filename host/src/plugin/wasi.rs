//! The WASI a plugin gets, for calls made synchronously on the proxy's own
//! thread.
//!
//! Hooks are called without wasmtime's async machinery: an async call runs
//! the guest on a fiber of its own, which cost three allocations and two
//! stack switches per call (bench/RESULTS.md, session 8). A synchronous call
//! needs every import to be synchronous too. wasmtime-wasi's synchronous
//! WASI blocks on a Tokio runtime for its blocking functions, which panics
//! on a thread that already runs one, so `wasi:io` is ours here: each
//! blocking function polls its operation once and traps if it would wait.
//! Writing to stdout and stderr (a panic message) never waits; a plugin
//! that sleeps or waits on a stream is misbehaving, and the trap fails only
//! its own call.
//!
//! The filesystem and sockets are not linked: with no preopened directory
//! and no network a plugin can do nothing with them, and a component that
//! imports them anyway still loads, its calls to them trapping.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::WasiCli;
use wasmtime_wasi::clocks::WasiClocks;
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, random};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::random::WasiRandom;

use super::host::HostState;

/// Links the WASI interfaces a plugin may import, all synchronous.
pub(crate) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<HostState, Io>(l, HostState::io)?;
    poll::add_to_linker::<HostState, Io>(l, HostState::io)?;
    streams::add_to_linker::<HostState, Io>(l, HostState::io)?;
    Ok(())
}

/// Defines every function of the WASI filesystem and sockets interfaces
/// `component` imports as a trap. wasmtime's own
/// `define_unknown_imports_as_traps` would do it, but it looks names up
/// exactly, so it also shadows the linked interfaces a plugin imports at
/// an older 0.2 version.
pub(crate) fn stub_files_and_sockets(
    l: &mut Linker<HostState>,
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<()> {
    use wasmtime::component::ResourceType;
    use wasmtime::component::types::ComponentItem;
    /// The resources the stubbed interfaces define: none can ever be made.
    struct Unavailable;
    let stubbed = |name: &str| name.starts_with("wasi:filesystem/") || name.starts_with("wasi:sockets/");
    let ty = component.component_type();
    // The stubbed interfaces also name `wasi:io` resources (a file's
    // stream), which must stay the types linked for `wasi:io`.
    let mut linked = Vec::new();
    for (name, import) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        for (item, export) in instance.exports(engine) {
            let ComponentItem::Resource(guest) = export.ty else {
                continue;
            };
            let host = match (name.split('@').next(), item) {
                (Some("wasi:io/streams"), "input-stream") => ResourceType::host::<DynInputStream>(),
                (Some("wasi:io/streams"), "output-stream") => ResourceType::host::<DynOutputStream>(),
                (Some("wasi:io/poll"), "pollable") => ResourceType::host::<DynPollable>(),
                (Some("wasi:io/error"), "error") => ResourceType::host::<wasmtime_wasi::p2::IoError>(),
                _ => continue,
            };
            linked.push((guest, host));
        }
    }
    for (name, import) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        if !stubbed(name) {
            continue;
        }
        let mut stubs = l.instance(name)?;
        for (item, export) in instance.exports(engine) {
            match export.ty {
                ComponentItem::ComponentFunc(_) => {
                    let called = format!("{name}#{item}");
                    stubs.func_new(item, move |_, _, _, _| {
                        Err(wasmtime::Error::msg(format!(
                            "{called}: a plugin has no files or network"
                        )))
                    })?;
                }
                ComponentItem::Resource(guest) => {
                    let host = linked
                        .iter()
                        .find(|(g, _)| *g == guest)
                        .map_or_else(ResourceType::host::<Unavailable>, |(_, h)| *h);
                    stubs.resource(item, host, |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The store's resource table, seen by `wasi:io` functions that must not
/// wait.
pub(crate) struct NonBlocking<'a>(&'a mut ResourceTable);

/// Names [`NonBlocking`] for the generated `add_to_linker` functions.
struct Io;

impl HasData for Io {
    type Data<'a> = NonBlocking<'a>;
}

/// Polls `op` once: its result if it is done, else `None`.
fn now<F: Future>(op: F) -> Option<F::Output> {
    match pin!(op).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The trap for a plugin that would wait.
fn would_block(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("a plugin may not wait ({what} is not ready)"))
}

/// [`now`] for a stream operation: waiting traps.
fn now_stream<T>(what: &str, op: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    now(op).unwrap_or_else(|| Err(StreamError::Trap(would_block(what))))
}

impl wasmtime_wasi::p2::bindings::io::error::Host for NonBlocking<'_> {}

impl wasmtime_wasi::p2::bindings::io::error::HostError for NonBlocking<'_> {
    fn drop(&mut self, err: Resource<wasmtime_wasi::p2::IoError>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::bindings::io::error::HostError::drop(self.0, err)
    }

    fn to_debug_string(&mut self, err: Resource<wasmtime_wasi::p2::IoError>) -> wasmtime::Result<String> {
        wasmtime_wasi::p2::bindings::io::error::HostError::to_debug_string(self.0, err)
    }
}

impl poll::Host for NonBlocking<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(would_block("poll")))
    }
}

impl poll::HostPollable for NonBlocking<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Asking never waits: not ready yet is an answer.
        now(async_poll::HostPollable::ready(self.0, pollable)).unwrap_or(Ok(false))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now(async_poll::HostPollable::block(self.0, pollable)).unwrap_or_else(|| Err(would_block("pollable.block")))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NonBlocking<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(match async_streams::Host::convert_stream_error(self.0, err)? {
            async_streams::StreamError::LastOperationFailed(e) => streams::StreamError::LastOperationFailed(e),
            async_streams::StreamError::Closed => streams::StreamError::Closed,
        })
    }
}

impl streams::HostOutputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // The stream leaves the table at once; a flush still under way is
        // abandoned rather than waited for.
        now(async_streams::HostOutputStream::drop(self.0, stream)).unwrap_or(Ok(()))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        now_stream(
            "output-stream.blocking-write-and-flush",
            async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        now_stream(
            "output-stream.blocking-write-zeroes-and-flush",
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        now_stream(
            "output-stream.blocking-flush",
            async_streams::HostOutputStream::blocking_flush(self.0, stream),
        )
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        now_stream(
            "output-stream.blocking-splice",
            async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl streams::HostInputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now(async_streams::HostInputStream::drop(self.0, stream)).unwrap_or(Ok(()))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        now_stream(
            "input-stream.blocking-read",
            async_streams::HostInputStream::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        now_stream(
            "input-stream.blocking-skip",
            async_streams::HostInputStream::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl HostState {
    fn cli(&mut self) -> wasmtime_wasi::cli::WasiCliCtxView<'_> {
        wasmtime_wasi::cli::WasiCliView::cli(self)
    }

    fn clocks(&mut self) -> wasmtime_wasi::clocks::WasiClocksCtxView<'_> {
        wasmtime_wasi::clocks::WasiClocksView::clocks(self)
    }

    fn random(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        wasmtime_wasi::random::WasiRandomView::random(self)
    }

    fn io(&mut self) -> NonBlocking<'_> {
        NonBlocking(self.ctx().table)
    }
}
