//! Lines handed from the data path to a writer thread of their own: the error log's and the
//! access log's. A connection never waits on a disk: handing a line over is a `try_send`
//! into a bounded channel, and a line that finds it full is counted as dropped. The thread
//! appends each line to its [`Sink`], and writes out when the channel has been idle for
//! [`IDLE`], at least every [`FLUSH_EVERY`] under a steady stream, when asked
//! ([`Handoff::flush`]), and when the channel closes (the log replaced, or the daemon
//! stopping: dropping the [`Handoff`] waits for the thread); after each write-out the sink
//! may report what was dropped meanwhile.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Lines waiting for the writer thread, at most; past this they are dropped.
const BACKLOG: usize = 65_536;
/// How long the channel stays idle before what was appended is written out.
const IDLE: Duration = Duration::from_millis(100);
/// Under a steady stream of lines, the longest before they are written out.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest [`Handoff::flush`] waits.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Where the writer thread puts lines.
pub(crate) trait Sink: Send + 'static {
    /// What is handed over.
    type Line: Send + 'static;

    /// Appends a line (to a buffer: [`flush`](Sink::flush) writes out).
    fn append(&mut self, line: Self::Line);

    /// Writes out what was appended.
    fn flush(&mut self);

    /// After each write-out: `dropped` counts the lines dropped since the log began (the
    /// channel full, or what the sink itself counted), for a report.
    fn written_out(&mut self, dropped: &AtomicU64) {
        let _ = dropped;
    }
}

/// What goes to the writer thread.
#[derive(Debug)]
pub(crate) enum Msg<L> {
    Line(L),
    /// Write out everything before this, then answer.
    Flush(oneshot::Sender<()>),
}

/// The data path's end of a writer thread.
#[derive(Debug)]
pub(crate) struct Handoff<L> {
    /// `None` when the log is off.
    tx: Option<SyncSender<Msg<L>>>,
    writer: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl<L: Send + 'static> Handoff<L> {
    /// A log that is off: lines are not kept, nor counted.
    pub(crate) fn off() -> Handoff<L> {
        Handoff {
            tx: None,
            writer: None,
            dropped: Arc::default(),
        }
    }

    /// Starts the thread `name` writing into `sink`; `dropped` counts the lines the channel
    /// had no room for (the sink may count its own there too).
    pub(crate) fn start<S: Sink<Line = L>>(
        name: &str,
        sink: S,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Handoff<L>> {
        let (tx, rx) = mpsc::sync_channel(BACKLOG);
        let counted = Arc::clone(&dropped);
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(sink, rx, &counted))?;
        Ok(Handoff {
            tx: Some(tx),
            writer: Some(writer),
            dropped,
        })
    }

    /// A log whose lines nobody writes: they stay in the returned channel, which holds
    /// `capacity`.
    #[cfg(test)]
    pub(crate) fn stalled(capacity: usize) -> (Handoff<L>, Receiver<Msg<L>>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let handoff = Handoff {
            tx: Some(tx),
            writer: None,
            dropped: Arc::default(),
        };
        (handoff, rx)
    }

    /// Whether lines are kept.
    pub(crate) fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// The count of dropped lines.
    pub(crate) fn dropped(&self) -> &Arc<AtomicU64> {
        &self.dropped
    }

    /// Hands a line to the writer thread, or counts it dropped when the backlog is full.
    pub(crate) fn send(&self, line: L) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(line))
        {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes out every line handed over so far, waiting at most 5 seconds.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a flush asked for still happens, nothing waits for it.
    pub(crate) async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let deadline = Instant::now() + FLUSH_WAIT;
        let (ack, done) = oneshot::channel();
        let mut msg = Msg::Flush(ack);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => return,
            }
        }
        let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), done).await;
    }
}

impl<L> Drop for Handoff<L> {
    fn drop(&mut self) {
        // Closing the channel tells the thread to write out and stop.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: appends lines, writes out when idle, after `FLUSH_EVERY`, when asked,
/// and when the channel closes.
fn write_loop<S: Sink>(mut sink: S, rx: Receiver<Msg<S::Line>>, dropped: &AtomicU64) {
    // When the oldest line not yet written out arrived.
    let mut dirty_since: Option<Instant> = None;
    loop {
        let msg = match dirty_since {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(
                IDLE.min((t + FLUSH_EVERY).saturating_duration_since(Instant::now())),
            ),
        };
        match msg {
            Ok(Msg::Line(line)) => {
                sink.append(line);
                if dirty_since.get_or_insert_with(Instant::now).elapsed() < FLUSH_EVERY {
                    continue;
                }
            }
            Ok(Msg::Flush(ack)) => {
                sink.flush();
                dirty_since = None;
                let _ = ack.send(());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                sink.flush();
                return;
            }
        }
        sink.flush();
        dirty_since = None;
        sink.written_out(dropped);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use super::*;

    /// Lines collected in memory, and how many write-outs were made.
    #[derive(Debug, Default)]
    struct Memory {
        pending: Vec<String>,
        written: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Memory {
        type Line = String;
        fn append(&mut self, line: String) {
            self.pending.push(line);
        }
        fn flush(&mut self) {
            let mut w = self.written.lock().expect("written");
            w.append(&mut self.pending);
        }
    }

    #[tokio::test]
    async fn lines_are_written_out_when_asked_and_when_the_log_goes() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Memory {
            pending: Vec::new(),
            written: Arc::clone(&written),
        };
        let log = Handoff::start("test-handoff", sink, Arc::default()).expect("thread");
        log.send("a".to_owned());
        log.flush().await;
        assert_eq!(*written.lock().expect("written"), ["a"]);
        log.send("b".to_owned());
        drop(log);
        assert_eq!(*written.lock().expect("written"), ["a", "b"]);
    }

    #[test]
    fn a_full_backlog_drops_and_counts_and_an_off_log_keeps_nothing() {
        let (log, rx) = Handoff::<u32>::stalled(2);
        for n in 0..5 {
            log.send(n);
        }
        assert_eq!(log.dropped().load(Ordering::Relaxed), 3);
        assert!(matches!(rx.try_recv(), Ok(Msg::Line(0))));
        let off = Handoff::<u32>::off();
        off.send(1);
        assert!(!off.is_on());
        assert_eq!(off.dropped().load(Ordering::Relaxed), 0);
    }
}
