//! The store's one writer thread. Single writes that queue up while a commit is being fsynced
//! commit together next (group commit: one redb transaction and one fsync for all of them, each
//! write still with its own revision); a multi-write transaction commits alone, all or nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::error::Error;
use crate::store::Inner;
use crate::txn::Txn;

/// At most this many writes share a commit.
const MAX_GROUP: usize = 512;

/// A write waiting for its turn.
pub(crate) trait Job: Send {
    /// Whether it may share its commit with other writes (it makes one write or fails without
    /// writing).
    fn grouped(&self) -> bool;
    /// Makes its writes in `tx`; `false` if it failed (a panic counts as a failure).
    fn run(&mut self, tx: &mut Txn<'_>) -> bool;
    /// Hands the outcome to the caller: its own error if it failed, else `Err` when the commit
    /// did not happen.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

/// What the caller of a write gets back: the write's result, or the panic it raised.
pub(crate) type Reply<T, E> = std::thread::Result<Result<T, E>>;

/// A caller's write: the closure, then its result.
pub(crate) struct Write<T, E, F> {
    f: Option<F>,
    grouped: bool,
    out: Option<Reply<T, E>>,
    reply: oneshot::Sender<Reply<T, E>>,
}

impl<T, E, F> Write<T, E, F> {
    pub(crate) fn new(f: F, grouped: bool) -> (Self, oneshot::Receiver<Reply<T, E>>) {
        let (reply, rx) = oneshot::channel();
        let w = Write {
            f: Some(f),
            grouped,
            out: None,
            reply,
        };
        (w, rx)
    }
}

impl<T, E, F> Job for Write<T, E, F>
where
    F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send,
    T: Send,
    E: From<Error> + Send,
{
    fn grouped(&self) -> bool {
        self.grouped
    }

    fn run(&mut self, tx: &mut Txn<'_>) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = catch_unwind(AssertUnwindSafe(|| f(tx)));
        let ok = matches!(out, Ok(Ok(_)));
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let out = match (self.out, committed) {
            // its own failure, or a panic to resume in the caller
            (Some(Ok(Err(e))), _) => Ok(Err(e)),
            (Some(Err(panic)), _) => Err(panic),
            (Some(Ok(Ok(v))), Ok(())) => Ok(Ok(v)),
            (_, Err(why)) => Ok(Err(Error::Commit(why).into())),
            (None, Ok(())) => Ok(Err(Error::Closed.into())),
        };
        let _ = self.reply.send(out);
    }
}

/// The writer thread; dropping the last handle lets it finish what is queued and waits for it.
pub(crate) struct Writer {
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(inner: Arc<Inner>) -> std::io::Result<Writer> {
        let (queue, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || serve(&inner, &rx))?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues `job`; `false` if the writer is gone.
    pub(crate) fn submit(&self, job: Box<dyn Job>) -> bool {
        self.queue.as_ref().is_some_and(|q| q.send(job).is_ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(inner: &Inner, rx: &mpsc::Receiver<Box<dyn Job>>) {
    let mut held: Option<Box<dyn Job>> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut group = vec![first];
        if group[0].grouped() {
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) if j.grouped() => group.push(j),
                    Ok(j) => {
                        held = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        inner.commit(group);
    }
}
