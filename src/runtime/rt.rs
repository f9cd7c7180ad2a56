//! The one place that names the async runtime.
//!
//! async-std is the requested runtime but is discontinued upstream; everything
//! else in the crate reaches it through these re-exports and helpers (and
//! [`super::tcp`], its sockets), so moving to another runtime (smol, say)
//! touches these two files only. Node threads wait for I/O and time in a
//! reactor of their own ([`super::reactor`]), which falls back to async-io
//! off them.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_executor::LocalExecutor;

pub use super::reactor::Timer;
use super::reactor::{self, Reactor};
pub use super::tcp::{TcpListener, TcpStream};

/// Runs a future to completion on the current thread (binaries' `main`, tests).
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

/// Runs `future` to completion on the current thread, waiting for I/O and
/// timers in a reactor of the thread's own, as a node thread does
/// ([`super::reactor`]): for a thread that drives many sockets itself (the
/// load generator's), whose every system call is taken from the servers it
/// measures. Sockets must be first waited on inside `future` to be
/// watched by that reactor ([`TcpStream::rehome`]); others stay on
/// async-io and still work. Falls back to [`block_on`] when no reactor can
/// be made; `Err` if the reactor failed while `future` ran.
pub fn block_on_own_reactor<F: Future>(future: F) -> io::Result<F::Output> {
    match Reactor::new() {
        Ok(reactor) => reactor::block_on(reactor, future),
        Err(err) => {
            log::warn!("no reactor of the thread's own ({err}); using async-io's");
            Ok(block_on(future))
        }
    }
}

thread_local! {
    /// The executor of the node thread this is, if it is one.
    static NODE_EXECUTOR: RefCell<Option<Rc<LocalExecutor<'static>>>> =
        const { RefCell::new(None) };
}

/// Spawns a task: on a node thread ([`spawn_node_thread`]), on that thread's
/// own executor, so the task never leaves it; elsewhere on async-std's.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let local = NODE_EXECUTOR.with(|executor| executor.borrow().clone());
    match local {
        Some(executor) => JoinHandle(Handle::Local(Some(executor.spawn(future)))),
        None => JoinHandle(Handle::Global(async_std::task::spawn(future))),
    }
}

/// A spawned task: awaiting it gives its output; dropping it lets the task
/// run on, detached.
pub struct JoinHandle<T>(Handle<T>);

enum Handle<T> {
    Global(async_std::task::JoinHandle<T>),
    /// `None` once dropped (detached).
    Local(Option<async_executor::Task<T>>),
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.0 {
            Handle::Global(handle) => Pin::new(handle).poll(cx),
            Handle::Local(Some(task)) => Pin::new(task).poll(cx),
            Handle::Local(None) => Poll::Pending,
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Handle::Local(task) = &mut self.0 {
            if let Some(task) = task.take() {
                task.detach();
            }
        }
    }
}

/// Starts a node thread named `name`: it runs `main` (made on the thread)
/// and every task spawned from it on one executor of its own, and waits for
/// I/O and timers in a reactor of its own ([`super::reactor`]).
///
/// Why: a node's hot path is a chain of tasks (a client's reader, the core,
/// the writers); on a pool of threads each link of the chain is a wake-up
/// of another thread — a futex, a context switch and tens of microseconds on
/// a busy machine. On one thread a wake-up is a push on a queue, a batch of
/// requests read from many sockets is handled by the core in one go, and
/// the thread sleeps only in `epoll_wait`. The thread that started the node
/// should then wait without driving the reactor itself (a plain
/// `JoinHandle::join`), so that events go to the node thread directly.
pub fn spawn_node_thread<F, M>(name: &str, main: M) -> io::Result<std::thread::JoinHandle<()>>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let executor = Rc::new(LocalExecutor::new());
            NODE_EXECUTOR.with(|slot| *slot.borrow_mut() = Some(executor.clone()));
            match Reactor::new() {
                Ok(reactor) => {
                    if let Err(err) = reactor::block_on(reactor, executor.run(main())) {
                        log::error!("the node thread's reactor failed: {err}");
                    }
                }
                Err(err) => {
                    log::warn!("no reactor of the node's own ({err}); using async-io's");
                    async_io::block_on(executor.run(main()));
                }
            }
            NODE_EXECUTOR.with(|slot| *slot.borrow_mut() = None);
        })
}

/// Lets every other ready task on this thread's executor run once.
pub async fn yield_now() {
    async_std::task::yield_now().await
}

pub async fn sleep(duration: Duration) {
    Timer::after(duration).await
}

/// Awaits `future` for at most `duration`; `None` when time ran out.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut timer = Timer::after(duration);
    futures::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        Pin::new(&mut timer).poll(cx).map(|()| None)
    })
    .await
}

/// Connects to `addr` from the local IP `from` (any port), so the other side
/// sees this node's own address as the source: peers and firewall rules can
/// tell nodes apart even when they share a host. `None` (or an unspecified
/// or other-family IP) lets the kernel choose, as a plain connect does.
pub async fn connect_from(from: Option<IpAddr>, addr: &str) -> io::Result<TcpStream> {
    use async_std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no address"));
    for target in addr.to_socket_addrs().await? {
        match super::tcp::connect_to(from, target).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// A deadline that a loop pushes later on every step (a link's silence
/// limit, moved on by every frame) without touching the reactor each time.
///
/// Why: off a node thread, arming a timer queues an operation for
/// async-io's reactor and wakes whichever thread waits in `epoll`, so a
/// timeout per frame costs a wake-up of another thread per frame; on a node
/// thread it is a remove and an insert in the timer map. Here moving the
/// deadline is a plain store; the one armed timer fires at the old
/// deadline, sees the new one and re-arms for it, so the timer is touched
/// about once per period.
pub struct Watchdog {
    deadline: std::time::Instant,
    /// When the armed timer fires: at or before `deadline`.
    armed_at: std::time::Instant,
    /// The timer fired at a passed deadline and is not armed any more.
    expired: bool,
    timer: Timer,
}

impl Watchdog {
    pub fn new(deadline: std::time::Instant) -> Watchdog {
        Watchdog {
            deadline,
            armed_at: deadline,
            expired: false,
            timer: Timer::at(deadline),
        }
    }

    /// Moves the deadline; costs a timer operation only when it moves
    /// earlier than the armed timer, or the timer expired.
    pub fn set(&mut self, deadline: std::time::Instant) {
        self.deadline = deadline;
        if self.expired || deadline < self.armed_at {
            self.expired = false;
            self.armed_at = deadline;
            self.timer.set_at(deadline);
        }
    }

    /// Ready once the deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if std::time::Instant::now() >= self.deadline {
                self.expired = true;
                return Poll::Ready(());
            }
            self.armed_at = self.deadline;
            self.timer.set_at(self.deadline);
        }
    }

    /// Awaits `future` until the deadline (which `future` may not move,
    /// as it borrows nothing of this); `None` when the deadline passed first.
    pub async fn guard<F: Future>(&mut self, future: F) -> Option<F::Output> {
        let mut future = std::pin::pin!(future);
        futures::future::poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            self.poll_expired(cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_watchdog_fires_at_its_latest_deadline_not_its_first() {
        block_on(async {
            let start = Instant::now();
            let mut dog = Watchdog::new(start + Duration::from_millis(30));
            dog.set(start + Duration::from_millis(90));
            assert_eq!(dog.guard(std::future::pending::<()>()).await, None);
            assert!(start.elapsed() >= Duration::from_millis(90));
        });
    }

    #[test]
    fn a_watchdog_moved_earlier_fires_early() {
        block_on(async {
            let start = Instant::now();
            let mut dog = Watchdog::new(start + Duration::from_secs(60));
            dog.set(start + Duration::from_millis(20));
            assert_eq!(dog.guard(std::future::pending::<()>()).await, None);
            assert!(start.elapsed() < Duration::from_secs(30));
        });
    }

    #[test]
    fn a_watchdog_set_again_after_it_expired_fires_again() {
        block_on(async {
            let mut dog = Watchdog::new(Instant::now() + Duration::from_millis(10));
            assert_eq!(dog.guard(std::future::pending::<()>()).await, None);
            // A later deadline than the one that fired: it must be armed
            // again, or the guard below would wait for ever.
            dog.set(Instant::now() + Duration::from_millis(20));
            let limit = Timer::after(Duration::from_secs(30));
            let guarded = Box::pin(dog.guard(std::future::pending::<()>()));
            match futures::future::select(limit, guarded).await {
                futures::future::Either::Left(_) => panic!("the watchdog never fired"),
                futures::future::Either::Right((fired, _)) => assert_eq!(fired, None),
            };
        });
    }

    #[test]
    fn a_watchdog_lets_a_ready_future_through() {
        block_on(async {
            let mut dog = Watchdog::new(Instant::now() + Duration::from_secs(60));
            assert_eq!(dog.guard(async { 7 }).await, Some(7));
            // A deadline already past is seen at once.
            dog.set(Instant::now() - Duration::from_millis(1));
            assert_eq!(dog.guard(std::future::pending::<()>()).await, None);
        });
    }
}
