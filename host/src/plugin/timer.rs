//! The epoch ticker as a POSIX timer whose signal advances the epochs, in
//! place of a thread of its own.
//!
//! Why not a thread: the proxy with one worker is otherwise a
//! single-threaded process, and a second thread makes every system call
//! dearer for as long as the process lives. glibc brackets each
//! cancellable call (`send`, `recv`, …) with two atomic updates once any
//! thread has been created, and the kernel counts references on each file
//! a call uses while another thread shares the file table. Four such
//! calls per proxied request: +0.2–0.3 µs per request with one idle
//! thread beside the worker (bench/RESULTS.md, session 21).
//!
//! The handler only reads the clock and adds to atomic counters, which is
//! all a signal handler may do; then it arms the timer again, one tick or
//! one idle tick ahead, as the thread slept. `SA_RESTART` restarts the
//! reads and writes it interrupts; tokio's `epoll_wait` loop takes the
//! `EINTR` that call cannot avoid. Only the `plumeway` binary asks for
//! this (`tick_with_signals`): a test harness or another program that
//! links the library does blocking calls of its own that need not expect
//! `EINTR`, and keeps the thread.

#![expect(
    unsafe_code,
    reason = "sigaction and the POSIX timer calls have no safe wrapper in std"
)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The signal the timer sends.
const SIGNAL: libc::c_int = libc::SIGALRM;

/// The timer's id (`timer_t`, a pointer-sized value on Linux), once
/// created. Not 0 for "none": the kernel numbers a process's first timer 0.
static TIMER: OnceLock<usize> = OnceLock::new();

/// Installs the handler and starts the timer. An error leaves the signal's
/// disposition as it was and no timer behind: the caller ticks with a
/// thread instead.
pub(super) fn start() -> std::io::Result<()> {
    // SAFETY: `action` and `event` are zeroed C structs with the fields
    // the calls read set; the handler is an `extern "C" fn(c_int)` that
    // only does what is async-signal-safe (see `on_signal`). Every pointer
    // passed lives across its call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(SIGNAL, &action, &mut previous) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_SIGNAL;
        event.sigev_signo = SIGNAL;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
            let error = std::io::Error::last_os_error();
            libc::sigaction(SIGNAL, &previous, std::ptr::null_mut());
            return Err(error);
        }
        let _ = TIMER.set(timer as usize);
    }
    arm(super::engine::IDLE_TICK);
    Ok(())
}

/// Sets the timer to fire once, `after` from now.
fn arm(after: Duration) {
    let Some(&timer) = TIMER.get() else {
        return;
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `timer` came from `timer_create` and is never deleted;
    // `timer_settime` is async-signal-safe.
    unsafe {
        libc::timer_settime(timer as libc::timer_t, 0, &spec, std::ptr::null_mut());
    }
}

/// One tick: bring the epochs up to the time, then arm the next.
extern "C" fn on_signal(_: libc::c_int) {
    // The interrupted code may be about to read `errno`.
    // SAFETY: `__errno_location` returns this thread's errno, always valid.
    let errno = unsafe { *libc::__errno_location() };
    super::engine::tick(Instant::now());
    arm(super::engine::next_tick());
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}
