//! Named threads with exactly one owner.
//!
//! A [`Worker`] is spawned by its owner and only its owner stops it:
//! [`Worker::stop`] raises the worker's [`StopSignal`], joins the thread with a
//! deadline and hands back what the thread returned. Workers report through
//! their return value, counters and channels; they never exit the process.
//! [`Notify`] is the wake-up primitive loops wait on (new data, or stop);
//! [`WakeFd`] and [`poll_until`] are the same for a loop that waits on
//! descriptors in `poll(2)`, and a [`Mailbox`] is a channel such a loop
//! can wait on.
//!
//! A worker spawned with [`Worker::spawn_supervised`] also reports to the
//! service when its thread ends without having been asked to stop (its
//! body returned, or panicked): an [`Ended`] on the [`Supervisor`]
//! channel. The service decides what follows (restart it, or stop
//! everything); the worker only tells.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Stack size for Tower's own threads. They keep no large buffers on the
/// stack, and small stacks keep RSS low.
pub const DEFAULT_STACK: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while holding one of these tiny locks leaves
    // plain data behind (a flag); carrying on is safe.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A level-triggered wake-up: `notify` sets a flag, `wait_until` returns as
/// soon as the flag is set (clearing it) or the deadline passes.
#[derive(Debug, Default)]
pub struct Notify {
    flag: Mutex<bool>,
    cond: Condvar,
}

impl Notify {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn notify(&self) {
        *lock(&self.flag) = true;
        self.cond.notify_all();
    }

    /// Waits until notified (for ever if never).
    pub fn wait(&self) {
        let mut flag = lock(&self.flag);
        while !*flag {
            flag = self.cond.wait(flag).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *flag = false;
    }

    /// Waits until notified or until `deadline`. Returns true if notified.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut flag = lock(&self.flag);
        loop {
            if *flag {
                *flag = false;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            flag = self
                .cond
                .wait_timeout(flag, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// A wake-up for a thread waiting in [`poll_until`]: an eventfd that
/// [`WakeFd::wake`] makes readable until the waiter [`WakeFd::clear`]s it.
/// Waking costs one system call, and only the waker pays it.
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor returned is ours alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (wakes a waiter, now or at its next wait).
    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our own eventfd; a
        // full counter (EAGAIN) still leaves it readable.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Makes it unreadable again (call before looking at what woke you).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from our own eventfd
        // (non-blocking: EAGAIN when not woken).
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A `pollfd` asking whether `fd` is readable.
pub fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `deadline` passes (never, for
/// `None`); `ppoll(2)`, so the deadline is kept to the microsecond. Returns
/// how many are ready (0 on timeout or a signal).
pub fn poll_until(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> usize {
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec {
            tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        }
    });
    let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `fds` is a live, correctly sized array of pollfd, `timeout_ptr`
    // is null or points at a live timespec, and no signal mask is passed.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout_ptr,
            std::ptr::null(),
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// Cloneable stop request shared between an owner and its worker thread.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.notify.notify();
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps for `timeout` unless stopped first. Returns true if stopped.
    pub fn sleep(&self, timeout: Duration) -> bool {
        self.sleep_until(Instant::now() + timeout)
    }

    /// Sleeps until stopped. Returns true.
    pub fn wait(&self) -> bool {
        while !self.is_stopped() {
            self.inner.notify.wait();
        }
        true
    }

    /// Sleeps until `deadline` unless stopped first. Returns true if stopped.
    pub fn sleep_until(&self, deadline: Instant) -> bool {
        while !self.is_stopped() {
            if !self.inner.notify.wait_until(deadline) {
                break;
            }
        }
        self.is_stopped()
    }
}

/// Why a worker could not be stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("thread {0} panicked")]
    Panicked(String),
    #[error("thread {0} did not stop within {1:?}; left running")]
    Timeout(String, Duration),
}

/// A worker's thread ended without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The thread's name.
    pub name: String,
    /// The panic message, or `None` when the body returned.
    pub panic: Option<String>,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.panic {
            Some(m) => write!(f, "thread {} panicked: {m}", self.name),
            None => write!(f, "thread {} ended on its own", self.name),
        }
    }
}

/// Where supervised workers report their end; cloned into each of them.
#[derive(Clone, Default)]
pub struct Supervisor(Option<Arc<dyn Fn(Ended) + Send + Sync>>);

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Supervisor"
        } else {
            "Supervisor(none)"
        })
    }
}

impl Supervisor {
    /// Reports go nowhere (tests of one worker, tools).
    pub fn none() -> Self {
        Supervisor(None)
    }

    /// A supervisor and the mailbox its reports arrive in.
    pub fn channel() -> io::Result<(Supervisor, Mailbox<Ended>)> {
        let (post, ends) = Mailbox::new()?;
        Ok((Supervisor::reporting(move |ended| drop(post.send(ended))), ends))
    }

    /// A supervisor that hands each report to `report` (the service puts
    /// them in its inbox beside other news).
    pub fn reporting(report: impl Fn(Ended) + Send + Sync + 'static) -> Self {
        Supervisor(Some(Arc::new(report)))
    }

    fn report(&self, ended: Ended) {
        if let Some(report) = &self.0 {
            report(ended);
        }
    }
}

/// The sending side of a [`Mailbox`]; cloned into each sender.
#[derive(Debug)]
pub struct Post<T> {
    tx: std::sync::mpsc::Sender<T>,
    wake: Arc<WakeFd>,
}

impl<T> Clone for Post<T> {
    fn clone(&self) -> Self {
        Post {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> Post<T> {
    /// Leaves `letter` and wakes the owner; `Err` (with it) once the
    /// mailbox is gone.
    pub fn send(&self, letter: T) -> Result<(), T> {
        self.tx.send(letter).map_err(|e| e.0)?;
        self.wake.wake();
        Ok(())
    }
}

/// A channel its owner can wait on in `poll(2)` beside its own
/// descriptors (the service's: worker ends and the owner's orders beside
/// `main`'s signal pipe), so nothing wakes it on a timer.
#[derive(Debug)]
pub struct Mailbox<T> {
    rx: std::sync::mpsc::Receiver<T>,
    wake: Arc<WakeFd>,
}

impl<T> Mailbox<T> {
    pub fn new() -> io::Result<(Post<T>, Mailbox<T>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = Arc::new(WakeFd::new()?);
        Ok((Post { tx, wake: wake.clone() }, Mailbox { rx, wake }))
    }

    /// The next letter, waiting until one comes, `also` becomes readable
    /// (the caller's own wake-up, e.g. its signal pipe), or `deadline`
    /// passes (never, for `None`).
    ///
    /// The wake-up may still be set from a letter already taken (one taken
    /// without waiting): that is no letter, so it is cleared and the wait
    /// goes on. Cleared before looking, so a letter posted meanwhile is
    /// seen now or wakes the next `poll`.
    pub fn wait(&self, also: Option<RawFd>, deadline: Option<Instant>) -> Option<T> {
        loop {
            if let Ok(letter) = self.rx.try_recv() {
                return Some(letter);
            }
            let mut fds = [readable(self.wake.fd()), readable(also.unwrap_or(-1))];
            if poll_until(&mut fds, deadline) == 0 || fds[1].revents != 0 {
                // The deadline, a signal, or the caller's own wake-up.
                return self.rx.try_recv().ok();
            }
            self.wake.clear();
        }
    }

    /// The next letter if one is there, without waiting.
    pub fn try_take(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A named thread, its stop signal, and its join handle.
#[derive(Debug)]
pub struct Worker<T> {
    name: String,
    stop: StopSignal,
    handle: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Spawns `body` on a thread called `name` with Tower's default stack.
    pub fn spawn<F>(name: &str, body: F) -> io::Result<Self>
    where
        F: FnOnce(StopSignal) -> T + Send + 'static,
    {
        Self::spawn_with_stack(name, DEFAULT_STACK, body)
    }

    pub fn spawn_with_stack<F>(name: &str, stack_size: usize, body: F) -> io::Result<Self>
    where
        F: FnOnce(StopSignal) -> T + Send + 'static,
    {
        let stop = StopSignal::new();
        let thread_stop = stop.clone();
        let handle = thread::Builder::new()
            .name(name.to_string())
            .stack_size(stack_size)
            .spawn(move || body(thread_stop))?;
        Ok(Worker {
            name: name.to_string(),
            stop,
            handle: Some(handle),
        })
    }

    /// Like [`Worker::spawn`]; if the thread ends without being asked to
    /// (returns, or panics), `supervisor` is told. A panic still unwinds
    /// (it is logged by the panic hook, and `stop` reports it).
    pub fn spawn_supervised<F>(name: &str, supervisor: &Supervisor, body: F) -> io::Result<Self>
    where
        F: FnOnce(StopSignal) -> T + Send + 'static,
    {
        let supervisor = supervisor.clone();
        let thread_name = name.to_string();
        Self::spawn(name, move |stop: StopSignal| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(stop.clone())));
            if !stop.is_stopped() {
                supervisor.report(Ended {
                    name: thread_name,
                    panic: outcome.as_ref().err().map(|p| panic_message(p.as_ref())),
                });
            }
            match outcome {
                Ok(v) => v,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signal the thread watches; raising it asks the thread to finish.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks the thread to stop and joins it, waiting at most `timeout`.
    pub fn stop(mut self, timeout: Duration) -> Result<T, WorkerError> {
        self.stop.stop();
        self.join_within(timeout)
    }

    /// Joins without raising the stop signal (for threads that end on their
    /// own, e.g. when their input closes).
    pub fn join_within(&mut self, timeout: Duration) -> Result<T, WorkerError> {
        let Some(handle) = self.handle.take() else {
            return Err(WorkerError::Panicked(self.name.clone()));
        };
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                // Dropping the handle detaches the thread; the process can
                // still exit.
                return Err(WorkerError::Timeout(self.name.clone(), timeout));
            }
            thread::sleep(Duration::from_millis(1));
        }
        handle.join().map_err(|_| WorkerError::Panicked(self.name.clone()))
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        // An owner that forgets to stop its worker still stops it: no thread
        // outlives its owner by accident.
        if let Some(handle) = self.handle.take() {
            self.stop.stop();
            let deadline = Instant::now() + Duration::from_secs(1);
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!(component = "worker", thread = %self.name, "thread did not stop within 1 s of its owner going away");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_joins_and_returns_the_threads_result() {
        let w = Worker::spawn("t-result", |stop: StopSignal| {
            let mut n = 0u32;
            while !stop.sleep(Duration::from_millis(1)) {
                n += 1;
            }
            n
        })
        .expect("spawn");
        assert_eq!(w.name(), "t-result");
        let n = w.stop(Duration::from_secs(5)).expect("stopped");
        let _ = n; // any count is fine; what matters is that stop returned it
    }

    #[test]
    fn a_sleep_is_cut_short_by_stop() {
        let w = Worker::spawn("t-sleep", |stop: StopSignal| stop.sleep(Duration::from_secs(3600))).expect("spawn");
        assert!(w.stop(Duration::from_secs(5)).expect("stopped"));
    }

    #[test]
    fn a_thread_that_ignores_stop_times_out_instead_of_hanging_the_owner() {
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let w = Worker::spawn("t-stuck", move |_stop: StopSignal| {
            while !r.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
        })
        .expect("spawn");
        let err = w.stop(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, WorkerError::Timeout(ref n, _) if n == "t-stuck"));
        release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_panic_is_reported_not_propagated() {
        let w = Worker::spawn("t-panic", |_stop: StopSignal| -> u8 { panic!("boom") }).expect("spawn");
        assert!(matches!(w.stop(Duration::from_secs(5)), Err(WorkerError::Panicked(_))));
    }

    #[test]
    fn notify_wakes_a_waiter_and_is_level_triggered() {
        let n = Notify::new();
        n.notify();
        // Already set: returns at once even with a deadline in the past.
        assert!(n.wait_until(Instant::now()));
        // Cleared by the wait.
        assert!(!n.wait_until(Instant::now()));
    }

    #[test]
    fn a_wake_fd_is_readable_once_woken_until_cleared() {
        let w = WakeFd::new().expect("eventfd");
        let soon = || Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(poll_until(&mut [readable(w.fd())], soon()), 0);
        w.wake();
        w.wake();
        assert_eq!(poll_until(&mut [readable(w.fd())], None), 1);
        w.clear();
        assert_eq!(poll_until(&mut [readable(w.fd())], soon()), 0);
        // A waiter in another thread is woken at once.
        let w = Arc::new(w);
        let waker = {
            let w = w.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                w.wake();
            })
        };
        let t0 = Instant::now();
        assert_eq!(
            poll_until(&mut [readable(w.fd())], Some(t0 + Duration::from_secs(10))),
            1
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        waker.join().expect("join");
    }

    #[test]
    fn a_mailbox_waits_past_the_wake_up_of_a_letter_already_taken() {
        let (post, mailbox) = Mailbox::new().expect("mailbox");
        // Taken without waiting: its wake-up stays set.
        post.send(1u8).expect("sent");
        assert_eq!(mailbox.try_take(), Some(1));
        let later = {
            let post = post.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                post.send(2u8).expect("sent");
            })
        };
        let t0 = Instant::now();
        assert_eq!(mailbox.wait(None, Some(t0 + Duration::from_secs(10))), Some(2));
        later.join().expect("join");
        // Nothing more: the wait lasts until its deadline.
        let t0 = Instant::now();
        assert_eq!(mailbox.wait(None, Some(t0 + Duration::from_millis(30))), None);
        assert!(t0.elapsed() >= Duration::from_millis(30));
        // The caller's own descriptor ends the wait, letter or not.
        let own = WakeFd::new().expect("wake");
        own.wake();
        assert_eq!(mailbox.wait(Some(own.fd()), None), None);
    }

    #[test]
    fn a_supervised_worker_reports_a_panic_or_a_return_but_not_a_stop() {
        let (sup, ends) = Supervisor::channel().expect("channel");
        let within = |d: u64| Some(Instant::now() + Duration::from_millis(d));
        let w = Worker::spawn_supervised("t-boom", &sup, |_stop: StopSignal| -> u8 { panic!("boom") }).expect("spawn");
        let ended = ends.wait(None, within(5000)).expect("reported");
        assert_eq!(
            ended,
            Ended {
                name: "t-boom".into(),
                panic: Some("boom".into())
            }
        );
        assert!(matches!(w.stop(Duration::from_secs(5)), Err(WorkerError::Panicked(_))));

        let w = Worker::spawn_supervised("t-done", &sup, |_stop: StopSignal| 7u8).expect("spawn");
        let ended = ends.wait(None, within(5000)).expect("reported");
        assert_eq!(ended.panic, None);
        assert_eq!(ended.to_string(), "thread t-done ended on its own");
        assert_eq!(w.stop(Duration::from_secs(5)).expect("joined"), 7);

        let w = Worker::spawn_supervised("t-stop", &sup, |stop: StopSignal| stop.sleep(Duration::from_secs(60)))
            .expect("spawn");
        assert!(w.stop(Duration::from_secs(5)).expect("stopped"));
        assert!(ends.wait(None, within(100)).is_none(), "a stop is not an end");
    }
}
