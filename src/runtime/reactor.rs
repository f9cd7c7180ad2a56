//! A node thread's own reactor: one `epoll` set that the thread waits in
//! directly, with the time-out of its next timer, between passes of its
//! executor.
//!
//! Why not async-io's: every pass of its reactor costs five system calls
//! whatever it finds (it re-arms a `timerfd` for its timers, `epoll_ctl`s
//! it, waits, then reads and re-arms the eventfd it is woken with), and each
//! readiness a task waits for is re-armed with another `epoll_ctl`, because
//! its registrations are one-shot. A node runs everything on one thread, so
//! none of that is needed: sockets are registered once, edge-triggered, for
//! both directions; the thread sleeps in `epoll_wait` with the time-out of
//! its earliest timer; the eventfd is written only when another thread
//! wakes a task while this one sleeps. A busy pass is one `epoll_wait` that
//! returns at once.
//!
//! Off node threads (clients, the web view, tests) the same types fall back
//! to async-io: a socket or timer is bound to the reactor of the thread that
//! first waits on it ([`Registered`], [`Timer`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// The `epoll` token of the eventfd other threads wake the node with.
const NOTIFY_TOKEN: u64 = u64::MAX;
/// Events taken from `epoll` per pass (more wait for the next pass).
const MAX_EVENTS: usize = 256;

thread_local! {
    /// The reactor of the node thread this is, while it runs.
    static CURRENT: RefCell<Option<Arc<Reactor>>> = const { RefCell::new(None) };
}

/// The reactor of the current thread, if it is a node thread.
fn current() -> Option<Arc<Reactor>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// One node thread's `epoll` set, its timers and its wake-up descriptor.
pub struct Reactor {
    epoll: OwnedFd,
    /// An eventfd in the set: written to wake the thread from `epoll_wait`.
    notify: OwnedFd,
    /// A task was woken since the executor's last pass.
    notified: AtomicBool,
    /// The thread is (about to be) in `epoll_wait`: a wake-up must write
    /// the eventfd.
    sleeping: AtomicBool,
    /// The thread stopped: nothing registered here will be reported again.
    stopped: AtomicBool,
    next_token: AtomicU64,
    sources: Mutex<HashMap<u64, Arc<Readiness>>>,
    /// Wakers by deadline; the `u64` tells timers with one deadline apart.
    timers: Mutex<BTreeMap<(Instant, u64), Waker>>,
}

impl Reactor {
    pub fn new() -> io::Result<Arc<Reactor>> {
        // SAFETY: plain system calls; each descriptor is owned at once.
        let epoll = unsafe { owned(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
        let notify = unsafe { owned(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))? };
        let reactor = Reactor {
            epoll,
            notify,
            notified: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            next_token: AtomicU64::new(0),
            sources: Mutex::new(HashMap::new()),
            timers: Mutex::new(BTreeMap::new()),
        };
        reactor.ctl(
            libc::EPOLL_CTL_ADD,
            reactor.notify.as_raw_fd(),
            NOTIFY_TOKEN,
        )?;
        Ok(Arc::new(reactor))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `event` outlives the call; the kernel checks the fds.
        let done = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds `fd` to the set, for both directions, until the [`Source`] is
    /// dropped (which must happen before `fd` is closed).
    fn register(self: &Arc<Self>, fd: RawFd) -> io::Result<Source> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let readiness = Arc::new(Readiness {
            // Unknown at first: the first wait tries the socket.
            read_ready: AtomicBool::new(true),
            write_ready: AtomicBool::new(true),
            read_closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        });
        self.lock_sources().insert(token, readiness.clone());
        if let Err(err) = self.ctl(libc::EPOLL_CTL_ADD, fd, token) {
            self.lock_sources().remove(&token);
            return Err(err);
        }
        Ok(Source {
            reactor: self.clone(),
            readiness,
            fd,
            token,
        })
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Readiness>>> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_timers(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Instant, u64), Waker>> {
        self.timers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_timer(&self, deadline: Instant, waker: &Waker) -> u64 {
        let id = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.lock_timers().insert((deadline, id), waker.clone());
        id
    }

    fn update_timer(&self, key: (Instant, u64), waker: &Waker) {
        let mut timers = self.lock_timers();
        match timers.get_mut(&key) {
            Some(armed) if armed.will_wake(waker) => {}
            Some(armed) => *armed = waker.clone(),
            None => {
                timers.insert(key, waker.clone());
            }
        }
    }

    fn remove_timer(&self, key: (Instant, u64)) {
        self.lock_timers().remove(&key);
    }

    /// Milliseconds until the earliest timer (rounded up, so the thread
    /// does not wake just before it and spin), or -1 for none.
    fn timeout_ms(&self, now: Instant) -> libc::c_int {
        let timers = self.lock_timers();
        match timers.keys().next() {
            None => -1,
            Some((deadline, _)) => {
                let left = deadline.saturating_duration_since(now);
                let ms = left.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        }
    }

    /// Wakes the timers due at `now`.
    fn fire_timers(&self, now: Instant, due: &mut Vec<Waker>) {
        {
            let mut timers = self.lock_timers();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
        }
        for waker in due.drain(..) {
            waker.wake();
        }
    }

    /// Waits in `epoll_wait` for at most `timeout_ms` and wakes what it
    /// reports.
    fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout_ms: libc::c_int,
        woken: &mut Vec<(Arc<Readiness>, u32)>,
    ) -> io::Result<()> {
        let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is valid for `capacity` entries.
        let count = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        };
        self.sleeping.store(false, Ordering::SeqCst);
        let count = match usize::try_from(count) {
            Ok(count) => count,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    return Ok(());
                }
                return Err(err);
            }
        };
        {
            let sources = self.lock_sources();
            for event in &events[..count] {
                let (token, flags) = (event.u64, event.events);
                if token == NOTIFY_TOKEN {
                    self.drain_notify();
                } else if let Some(readiness) = sources.get(&token) {
                    woken.push((readiness.clone(), flags));
                }
            }
        }
        for (readiness, flags) in woken.drain(..) {
            readiness.report(flags);
        }
        Ok(())
    }

    fn drain_notify(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads 8 bytes into `count`; a non-blocking eventfd.
        unsafe {
            libc::read(
                self.notify.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            );
        }
    }

    /// The thread stopped: every waiter is woken to find out.
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let sources: Vec<Arc<Readiness>> = self.lock_sources().values().cloned().collect();
        for readiness in sources {
            readiness.reader.wake();
            readiness.writer.wake();
        }
        let timers = std::mem::take(&mut *self.lock_timers());
        for waker in timers.into_values() {
            waker.wake();
        }
    }
}

impl Wake for Reactor {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// A task of this thread's executor became ready: a plain flag when the
    /// thread is running (it looks before it sleeps), the eventfd when it
    /// sleeps (or is about to: both sides use `SeqCst`, so one of them sees
    /// the other).
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.notified.swap(true, Ordering::SeqCst) && self.sleeping.load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from `one`; a non-blocking eventfd
            // (a full counter means a wake-up is pending anyway).
            unsafe {
                libc::write(self.notify.as_raw_fd(), one.as_ptr().cast(), one.len());
            }
        }
    }
}

/// Takes ownership of a descriptor a system call returned (or its error).
///
/// # Safety
/// `fd`, if not negative, must be a fresh descriptor nothing else owns.
unsafe fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from_raw_fd(fd))
}

/// Runs `future` on the current thread with `reactor` as its reactor: the
/// thread becomes a node thread until it returns.
pub fn block_on<F: Future>(reactor: Arc<Reactor>, future: F) -> io::Result<F::Output> {
    struct Current(Arc<Reactor>);
    impl Drop for Current {
        fn drop(&mut self) {
            CURRENT.with(|current| current.borrow_mut().take());
            self.0.stop();
        }
    }
    CURRENT.with(|current| *current.borrow_mut() = Some(reactor.clone()));
    let _current = Current(reactor.clone());
    let waker = Waker::from(reactor.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    let mut woken = Vec::new();
    let mut due = Vec::new();
    loop {
        reactor.notified.store(false, Ordering::SeqCst);
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        reactor.sleeping.store(true, Ordering::SeqCst);
        let timeout_ms = if reactor.notified.load(Ordering::SeqCst) {
            0
        } else {
            reactor.timeout_ms(Instant::now())
        };
        reactor.wait(&mut events, timeout_ms, &mut woken)?;
        reactor.fire_timers(Instant::now(), &mut due);
    }
}

/// What the reactor knows of one registered descriptor. Edge-triggered: a
/// flag is set by each edge and taken by the waiter that acts on it.
struct Readiness {
    read_ready: AtomicBool,
    write_ready: AtomicBool,
    /// The peer closed its side, or the socket failed (sticky): a read
    /// that returned fewer bytes than asked does not show that nothing is
    /// left, as the end (or the error) is still to be read.
    read_closed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

/// Which way a waiter waits.
#[derive(Clone, Copy)]
pub enum Direction {
    Read,
    Write,
}

impl Readiness {
    /// The edge flag and the waiter of one direction.
    fn edge(&self, direction: Direction) -> (&AtomicBool, &AtomicWaker) {
        match direction {
            Direction::Read => (&self.read_ready, &self.reader),
            Direction::Write => (&self.write_ready, &self.writer),
        }
    }

    fn report(&self, flags: u32) {
        let broken = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if broken || flags & libc::EPOLLRDHUP as u32 != 0 {
            self.read_closed.store(true, Ordering::SeqCst);
        }
        if broken || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
            self.read_ready.store(true, Ordering::SeqCst);
            self.reader.wake();
        }
        if broken || flags & libc::EPOLLOUT as u32 != 0 {
            self.write_ready.store(true, Ordering::SeqCst);
            self.writer.wake();
        }
    }
}

/// A descriptor in a node reactor's set; dropping it takes it out.
struct Source {
    reactor: Arc<Reactor>,
    readiness: Arc<Readiness>,
    fd: RawFd,
    token: u64,
}

impl Source {
    fn poll_ready(&self, cx: &mut Context<'_>, direction: Direction) -> Poll<io::Result<()>> {
        let (flag, waiter) = self.readiness.edge(direction);
        if flag.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        waiter.register(cx.waker());
        if flag.swap(false, Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        if self.reactor.stopped.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other(
                "the node thread that watched this socket has stopped",
            )));
        }
        Poll::Pending
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.reactor.lock_sources().remove(&self.token);
        // Fails only if the fd is gone already, which `Registered` rules out.
        let _ = self.reactor.ctl(libc::EPOLL_CTL_DEL, self.fd, self.token);
    }
}

/// How a descriptor is watched: by the node reactor of the thread that
/// first waited on it, or else by async-io.
enum Watch<T: AsFd> {
    Node(Source),
    AsyncIo(async_io::Async<Arc<T>>),
    Failed(io::ErrorKind, String),
}

/// A non-blocking descriptor and its registration, made when it is first
/// waited on (so a listener bound on one thread and served on a node thread
/// is watched by the node's reactor).
///
/// The protocol of a waiter: `clear_*_ready` before trying the descriptor;
/// after `WouldBlock`, `poll_*_ready`, which is ready once an edge came
/// after the clear. One reader and one writer at a time.
pub struct Registered<T: AsFd> {
    watch: OnceLock<Watch<T>>,
    io: Arc<T>,
}

impl<T: AsFd> std::fmt::Debug for Registered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("fd", &self.io.as_fd().as_raw_fd())
            .finish()
    }
}

impl<T: AsFd> Registered<T> {
    /// Takes `io`, which must be in non-blocking mode already.
    pub fn new(io: T) -> Registered<T> {
        Registered {
            watch: OnceLock::new(),
            io: Arc::new(io),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn watch(&self) -> &Watch<T> {
        self.watch.get_or_init(|| {
            let made = match current() {
                Some(reactor) => reactor
                    .register(self.io.as_fd().as_raw_fd())
                    .map(Watch::Node),
                None => async_io::Async::new(self.io.clone()).map(Watch::AsyncIo),
            };
            made.unwrap_or_else(|err| Watch::Failed(err.kind(), err.to_string()))
        })
    }

    pub fn clear_read_ready(&self) {
        self.clear_ready(Direction::Read);
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ready(cx, Direction::Read)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ready(cx, Direction::Write)
    }

    /// Whether a read that returned `got` bytes of `asked` left the
    /// descriptor empty, so the next read may wait for an edge instead of
    /// trying it (and finding `EAGAIN`).
    ///
    /// On a node reactor, a short read took everything there was: bytes
    /// that come later raise an edge after the clear that preceded the
    /// read. Not so once the peer closed (the end is still to be read, and
    /// its edge may have been taken already), nor for an empty read or
    /// one that filled the buffer, nor with async-io (where waiting costs
    /// an `epoll_ctl` and a pass of its reactor, more than the `EAGAIN`).
    pub fn short_read_drained(&self, got: usize, asked: usize) -> bool {
        match self.watch.get() {
            Some(Watch::Node(source)) => {
                got > 0 && got < asked && !source.readiness.read_closed.load(Ordering::SeqCst)
            }
            _ => false,
        }
    }

    /// Runs `op` (a read, write or accept on the descriptor) until it
    /// does not find it busy, waiting for readiness in `direction` between
    /// tries, as the protocol above says.
    pub fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        direction: Direction,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            self.clear_ready(direction);
            match op(&self.io) {
                Ok(done) => return Poll::Ready(Ok(done)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(self.poll_ready(cx, direction))?;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn clear_ready(&self, direction: Direction) {
        if let Some(Watch::Node(source)) = self.watch.get() {
            source
                .readiness
                .edge(direction)
                .0
                .store(false, Ordering::SeqCst);
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>, direction: Direction) -> Poll<io::Result<()>> {
        match (self.watch(), direction) {
            (Watch::Node(source), _) => source.poll_ready(cx, direction),
            (Watch::AsyncIo(watched), Direction::Read) => watched.poll_readable(cx),
            (Watch::AsyncIo(watched), Direction::Write) => watched.poll_writable(cx),
            (Watch::Failed(kind, why), _) => Poll::Ready(Err(io::Error::new(*kind, why.clone()))),
        }
    }
}

impl<T: AsFd> Drop for Registered<T> {
    /// The registration goes before the descriptor closes.
    fn drop(&mut self) {
        self.watch.take();
    }
}

/// A timer on the node reactor of the thread that first waits on it (no
/// system call to arm or move it), or else on async-io.
pub struct Timer {
    deadline: Instant,
    armed: Armed,
}

enum Armed {
    No,
    Node { reactor: Arc<Reactor>, id: u64 },
    AsyncIo(async_io::Timer),
}

impl Timer {
    pub fn at(deadline: Instant) -> Timer {
        Timer {
            deadline,
            armed: Armed::No,
        }
    }

    pub fn after(duration: Duration) -> Timer {
        Timer::at(Instant::now() + duration)
    }

    /// Moves the deadline (a timer that fired can be awaited again).
    pub fn set_at(&mut self, deadline: Instant) {
        self.disarm();
        self.deadline = deadline;
    }

    fn disarm(&mut self) {
        if let Armed::Node { reactor, id } = std::mem::replace(&mut self.armed, Armed::No) {
            reactor.remove_timer((self.deadline, id));
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.disarm();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        match &mut self.armed {
            Armed::No => match current() {
                Some(reactor) => {
                    let id = reactor.add_timer(deadline, cx.waker());
                    self.armed = Armed::Node { reactor, id };
                }
                None => {
                    let mut timer = async_io::Timer::at(deadline);
                    if Pin::new(&mut timer).poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    self.armed = Armed::AsyncIo(timer);
                }
            },
            Armed::Node { reactor, id } => {
                if reactor.stopped.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                reactor.update_timer((deadline, *id), cx.waker());
            }
            Armed::AsyncIo(timer) => return Pin::new(timer).poll(cx).map(|_| ()),
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Runs `future` as a node thread would (a fresh reactor), on a thread
    /// of its own.
    fn on_node_thread<F, T>(make: F) -> T
    where
        F: FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
        T: Send + 'static,
    {
        std::thread::spawn(move || block_on(Reactor::new().unwrap(), make()).unwrap())
            .join()
            .unwrap()
    }

    #[test]
    fn timers_fire_in_order_and_a_moved_timer_fires_at_its_new_deadline() {
        let order = on_node_thread(|| {
            Box::pin(async {
                let start = Instant::now();
                let mut late = Timer::after(Duration::from_millis(60));
                let mut early = Timer::after(Duration::from_millis(10));
                let mut order = Vec::new();
                match futures::future::select(&mut late, &mut early).await {
                    futures::future::Either::Left(_) => order.push("late"),
                    futures::future::Either::Right(_) => order.push("early"),
                }
                (&mut late).await;
                order.push("late");
                assert!(start.elapsed() >= Duration::from_millis(60));
                // Moved later after it fired: it waits again.
                let again = Instant::now();
                early.set_at(again + Duration::from_millis(20));
                early.await;
                assert!(again.elapsed() >= Duration::from_millis(20));
                order
            })
        });
        assert_eq!(order, ["early", "late"]);
    }

    #[test]
    fn a_task_woken_from_another_thread_runs_while_the_node_sleeps() {
        let got = on_node_thread(|| {
            Box::pin(async {
                let (tx, rx) = futures::channel::oneshot::channel();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    tx.send(7u32).unwrap();
                });
                rx.await.unwrap()
            })
        });
        assert_eq!(got, 7);
    }

    #[test]
    fn a_socket_is_reported_readable_and_writable_by_its_edges() {
        let got = on_node_thread(|| {
            Box::pin(async {
                let (mut far, near) = std::os::unix::net::UnixStream::pair().unwrap();
                near.set_nonblocking(true).unwrap();
                let near = Registered::new(near);
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50));
                    far.write_all(b"late").unwrap();
                    far
                });
                let mut buf = [0u8; 8];
                let n = futures::future::poll_fn(|cx| {
                    near.poll_io(cx, Direction::Read, |mut near_end| near_end.read(&mut buf))
                })
                .await
                .unwrap();
                let far = writer.join().unwrap();
                drop(far);
                (buf[..n].to_vec(), near.get_ref().read(&mut buf).unwrap())
            })
        });
        assert_eq!(got, (b"late".to_vec(), 0));
    }

    #[test]
    fn off_a_node_thread_timers_and_sockets_use_async_io() {
        async_io::block_on(async {
            let start = Instant::now();
            Timer::after(Duration::from_millis(20)).await;
            assert!(start.elapsed() >= Duration::from_millis(20));
            let (mut far, near) = std::os::unix::net::UnixStream::pair().unwrap();
            near.set_nonblocking(true).unwrap();
            let near = Registered::new(near);
            far.write_all(b"x").unwrap();
            futures::future::poll_fn(|cx| near.poll_read_ready(cx))
                .await
                .unwrap();
            assert!(matches!(near.watch.get(), Some(Watch::AsyncIo(_))));
        });
    }
}
