//! Request deadlines kept by the connection's own timer.
//!
//! A `tokio::time::timeout` per upstream attempt puts an entry into the
//! runtime's timer wheel and takes it out again, on every request, though
//! the response nearly always comes long before. A client connection on
//! the server's own HTTP/1.1 path already has a timer, for its next head,
//! which sits unused while a request is in flight; the request's deadline
//! is handed to it through a [`Slot`] instead. The connection's task polls
//! the request's future and that timer together, so when the timer fires
//! past the deadline, the next poll of the request sees it.
//!
//! Requests from anywhere else (HTTP/2, TLS, hyper's HTTP/1.1) have no
//! slot and use tokio's timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// What a request in flight on a connection waits on, shared by the
/// request and its connection.
#[derive(Debug)]
pub struct Slot {
    /// Deadlines are kept as nanoseconds after this.
    base: Instant,
    /// The deadline the request waits on; 0 for none.
    wanted: AtomicU64,
    /// Set by the connection when its timer fired past `wanted`.
    fired: AtomicBool,
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

impl Slot {
    /// A slot with nothing waiting.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            wanted: AtomicU64::new(0),
            fired: AtomicBool::new(false),
        }
    }

    /// The deadline a request in flight waits on.
    pub fn wanted(&self) -> Option<Instant> {
        match self.wanted.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n)),
        }
    }

    /// Called by the connection when `wanted` has passed.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Relaxed);
    }

    /// Forgets the deadline (the request is over).
    pub fn clear(&self) {
        self.wanted.store(0, Ordering::Relaxed);
        self.fired.store(false, Ordering::Relaxed);
    }

    /// `at` as `wanted` keeps it: at least 1, as 0 means none.
    fn nanos(&self, at: Instant) -> u64 {
        let n = u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        n.max(1)
    }
}

/// `fut` bounded by `until`: on `slot`'s connection timer when there is a
/// slot, else on a timer of its own. `Err(())` when the time ran out.
pub fn timeout_at<F: Future>(slot: Option<&Slot>, until: Instant, fut: F) -> Timeout<'_, F> {
    Timeout {
        fut,
        sleep: match slot {
            None => Some(tokio::time::sleep_until(until)),
            Some(_) => None,
        },
        until,
        slot: slot.map(|slot| (slot, slot.nanos(until))),
    }
}

pin_project_lite::pin_project! {
    /// The future [`timeout_at`] returns. A struct rather than an `async
    /// fn`, so that the (large) future it bounds is moved once, into it.
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<'a, F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<Sleep>,
        until: Instant,
        // With the deadline as the slot keeps it.
        slot: Option<(&'a Slot, u64)>,
    }

    impl<'a, F> PinnedDrop for Timeout<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            // However it ends, dropped half-way included, the connection
            // stops keeping its deadline.
            if let Some((slot, _)) = this.slot {
                slot.clear();
            }
        }
    }
}

impl<F: Future> Future for Timeout<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match (this.slot, this.sleep.as_pin_mut()) {
            (Some((slot, at)), _) => {
                if slot.fired.swap(false, Ordering::Relaxed) && Instant::now() >= *this.until {
                    return Poll::Ready(Err(()));
                }
                slot.wanted.store(*at, Ordering::Relaxed);
                Poll::Pending
            }
            (None, Some(sleep)) => sleep.poll(cx).map(|()| Err(())),
            (None, None) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_holds_the_deadline_until_the_connection_fires_it() {
        let slot = Slot::new();
        let until = Instant::now() + std::time::Duration::from_secs(5);
        {
            let mut waiting = std::pin::pin!(timeout_at(Some(&slot), until, std::future::pending::<()>()));
            let cx = &mut Context::from_waker(std::task::Waker::noop());
            assert!(waiting.as_mut().poll(cx).is_pending());
            assert_eq!(slot.wanted(), Some(until), "the connection is told when");
            // Fired early (the connection's timer had another deadline):
            // the request goes on.
            slot.fire();
            assert!(waiting.as_mut().poll(cx).is_pending());
            tokio::time::advance(std::time::Duration::from_secs(5)).await;
            slot.fire();
            assert_eq!(waiting.as_mut().poll(cx), Poll::Ready(Err(())));
        }
        assert_eq!(slot.wanted(), None, "cleared once over");

        // Without a slot, a timer of its own.
        let until = Instant::now() + std::time::Duration::from_secs(1);
        assert_eq!(timeout_at(None, until, std::future::pending::<()>()).await, Err(()));
        assert_eq!(timeout_at(None, until, async { 7 }).await, Ok(7));
    }
}
