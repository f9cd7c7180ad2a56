//! Direct writes: the core's thread puts bytes on a plain TCP socket
//! itself, without waking another task to do it.
//!
//! Why: on the write path every hand-off between threads costs a wake-up (a
//! futex, a context switch, often an epoll re-arm) and tens of microseconds
//! of latency on a loaded machine. The core's thread already knows, at the
//! end of a batch, every byte a connection or a peer link is owed; when the
//! socket has room — nearly always — one non-blocking `send` delivers all of
//! it and nobody else wakes.
//!
//! When the socket takes only part (the other end reads slowly), the rest is
//! queued and the connection's own async task, woken once, finishes it; while
//! it does, every later send is appended behind it, so bytes never reorder
//! or interleave. The queue is bounded in bytes: a sender that would pass
//! the bound gets [`SendError::Overflow`] and the connection is cut (a
//! client that stopped reading, a peer that stalled): the socket is shut
//! down, which also ends the task's blocked write.
//!
//! Only plain TCP goes this way: a TLS session's records are made and
//! flushed by its own task.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::AsyncWriteExt;

use super::rt::TcpStream;

/// Why [`DirectWriter::send`] did not take bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The socket failed or was closed.
    #[error("the connection is closed")]
    Closed,
    /// The other end is not reading: queued bytes would pass the bound.
    #[error("the other end is not reading ({0} bytes queued)")]
    Overflow(usize),
}

#[derive(Default)]
struct State {
    /// Bytes the socket has not taken yet, in order.
    queued: Vec<u8>,
    /// The task holds bytes taken from the queue and is writing them (or
    /// owns the socket for a stream of its own): nobody else writes.
    task_writing: bool,
    closed: bool,
    waker: Option<Waker>,
}

/// The write side of one plain TCP socket, shared by the core's thread and
/// the connection's task (see the module doc).
pub struct DirectWriter {
    tcp: TcpStream,
    state: Mutex<State>,
    /// The most bytes queued at once; one send of any size is queued when
    /// nothing else is.
    max_queued_bytes: usize,
}

impl DirectWriter {
    pub fn new(tcp: TcpStream, max_queued_bytes: usize) -> DirectWriter {
        DirectWriter {
            tcp,
            state: Mutex::new(State::default()),
            max_queued_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `bytes` after everything sent before: on the socket at once
    /// when nothing is queued and it has room, else queued for the task.
    /// Never blocks.
    pub fn send(&self, bytes: &[u8]) -> Result<(), SendError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        if state.closed {
            return Err(SendError::Closed);
        }
        let mut rest = bytes;
        if state.queued.is_empty() && !state.task_writing {
            match send_now(&self.tcp, rest) {
                Ok(sent) => rest = &rest[sent..],
                Err(_) => {
                    self.cut(&mut state);
                    return Err(SendError::Closed);
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        let queued = state.queued.len() + rest.len();
        if queued > self.max_queued_bytes && !state.queued.is_empty() {
            self.cut(&mut state);
            return Err(SendError::Overflow(queued));
        }
        state.queued.extend_from_slice(rest);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Cuts the connection: every later send fails, the socket is shut
    /// down (so a task blocked writing to a peer that stopped reading wakes
    /// with an error at once), and the task is woken.
    pub fn close(&self) {
        self.cut(&mut self.lock());
    }

    fn cut(&self, state: &mut State) {
        state.closed = true;
        state.queued = Vec::new();
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// For the task: waits until bytes are queued, swaps them into `buf`
    /// (which must be empty) and takes the socket until the next call. Ready
    /// with `false` once closed. A call that finds nothing queued gives the
    /// socket back.
    pub fn poll_take(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<bool> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(false);
        }
        if state.queued.is_empty() {
            state.task_writing = false;
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        debug_assert!(buf.is_empty());
        std::mem::swap(&mut state.queued, buf);
        state.task_writing = true;
        Poll::Ready(true)
    }

    /// For the task: takes the socket for a stream of its own once what is
    /// queued before it went out (writing it meanwhile). False when closed.
    /// The socket is given back by the next [`Self::poll_take`] that finds
    /// nothing queued.
    pub async fn own(&self, buf: &mut Vec<u8>) -> bool {
        loop {
            {
                let mut state = self.lock();
                if state.closed {
                    return false;
                }
                if state.queued.is_empty() {
                    state.task_writing = true;
                    return true;
                }
                buf.clear();
                std::mem::swap(&mut state.queued, buf);
                state.task_writing = true;
            }
            if self.write_out(buf).await.is_err() {
                return false;
            }
        }
    }

    /// For the task: writes `buf` (taken from the queue) to the socket,
    /// waiting as needed; closes the writer on failure.
    pub async fn write_out(&self, buf: &[u8]) -> io::Result<()> {
        let result = (&self.tcp).write_all(buf).await;
        if result.is_err() {
            self.close();
        }
        result
    }

    /// Bytes waiting for the task.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued.len()
    }

    /// Whether the writer was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// One non-blocking `send` of as much of `bytes` as the socket takes now
/// (0 when it is full).
fn send_now(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the descriptor belongs to `tcp`, alive for the call; the
        // pointer and length describe `bytes`. MSG_DONTWAIT keeps the call
        // from blocking whatever the socket's mode; MSG_NOSIGNAL turns a
        // closed peer into EPIPE rather than a SIGPIPE.
        let sent = unsafe {
            libc::send(
                tcp.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::rt;
    use futures::AsyncReadExt;

    /// The task side, as the connection tasks run it: writes out whatever
    /// the socket did not take at once, until the writer closes or a write
    /// fails.
    async fn drain(writer: &DirectWriter) {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let more = futures::future::poll_fn(|cx| writer.poll_take(cx, &mut buf)).await;
            if !more || writer.write_out(&buf).await.is_err() {
                return;
            }
            if buf.capacity() > 1 << 20 {
                buf = Vec::new();
            }
        }
    }

    use crate::runtime::tcp::loopback_pair as pair;

    #[test]
    fn bytes_arrive_in_order_when_the_socket_fills() {
        rt::block_on(async {
            let (a, mut b) = pair().await;
            let writer = std::sync::Arc::new(DirectWriter::new(a, 64 << 20));
            let task = {
                let writer = writer.clone();
                rt::spawn(async move { drain(&writer).await })
            };
            // Far more than the socket buffers: most of it is queued.
            let mut expected = Vec::new();
            for i in 0..2000u32 {
                let chunk: Vec<u8> = (0..4096).map(|j| (i as usize * 7 + j) as u8).collect();
                writer.send(&chunk).unwrap();
                expected.extend_from_slice(&chunk);
            }
            assert!(writer.queued_bytes() > 0, "the socket took 8 MB at once");
            let mut got = vec![0; expected.len()];
            b.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "bytes reordered or lost");
            writer.close();
            task.await;
            assert_eq!(writer.send(b"x"), Err(SendError::Closed));
        });
    }

    #[test]
    fn a_reader_that_stops_overflows_the_bound() {
        rt::block_on(async {
            let (a, _b) = pair().await;
            let writer = DirectWriter::new(a, 1 << 20);
            let chunk = vec![0u8; 64 << 10];
            let mut result = Ok(());
            for _ in 0..1000 {
                result = writer.send(&chunk);
                if result.is_err() {
                    break;
                }
            }
            assert!(matches!(result, Err(SendError::Overflow(_))), "{result:?}");
            assert!(writer.is_closed());
            assert_eq!(writer.queued_bytes(), 0, "a cut writer keeps nothing");
        });
    }

    #[test]
    fn one_large_send_is_queued_whole_when_nothing_else_is() {
        rt::block_on(async {
            let (a, mut b) = pair().await;
            let writer = std::sync::Arc::new(DirectWriter::new(a, 1024));
            let big = vec![7u8; 8 << 20];
            writer.send(&big).unwrap();
            let task = {
                let writer = writer.clone();
                rt::spawn(async move { drain(&writer).await })
            };
            let mut got = vec![0; big.len()];
            b.read_exact(&mut got).await.unwrap();
            assert!(got == big);
            writer.close();
            task.await;
        });
    }
}
