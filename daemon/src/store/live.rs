//! The live feed: every committed batch, with its ids, published once as a
//! whole to followers, the detector and the lag watch.
//!
//! A batch rather than an event per message: at 200k events/s the per-event
//! send, wake-up and receive of a broadcast were the detector's bottleneck
//! (it was skipped ahead with CPU to spare). Each batch carries the number
//! of events published before it, so a receiver that falls behind knows
//! exactly how many events it missed, not just how many messages.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::broadcast;
use traceed_wire::LiveEvent;

/// One committed batch, in id order.
#[derive(Debug)]
pub struct Batch {
    /// Events published before this batch since the feed was made.
    pub seq: u64,
    pub events: Vec<LiveEvent>,
}

/// The sending side (the writer publishes; everyone else subscribes).
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<Batch>>,
    published: Arc<AtomicU64>,
    capacity: usize,
}

impl Live {
    /// A feed of `capacity` batches. A slot's batch is freed once every
    /// receiver has it, so memory follows the slowest receiver's backlog.
    pub fn new(capacity: usize) -> Self {
        Live {
            tx: broadcast::channel(capacity).0,
            published: Arc::new(AtomicU64::new(0)),
            capacity,
        }
    }

    pub fn publish(&self, events: Vec<LiveEvent>) {
        if events.is_empty() {
            return;
        }
        // Counted before the send: a receiver subscribing in between then
        // starts at the count and sees this batch as overlapping, not as a
        // gap.
        let seq = self.published.fetch_add(events.len() as u64, Relaxed);
        let _ = self.tx.send(Arc::new(Batch { seq, events }));
    }

    pub fn subscribe(&self) -> Feed {
        let rx = self.tx.subscribe();
        Feed {
            rx,
            next: self.published.load(Relaxed),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A receiver that turns the broadcast's lag into an exact event count.
pub struct Feed {
    rx: broadcast::Receiver<Arc<Batch>>,
    /// `seq` the next batch should have.
    next: u64,
}

/// What `Feed::recv` hands out: a batch and how many events were skipped
/// right before it (0 unless this receiver fell behind).
pub struct Received {
    pub skipped: u64,
    pub batch: Arc<Batch>,
}

impl Feed {
    /// The next batch; None once the writer is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        loop {
            match self.rx.recv().await {
                Ok(batch) => return Some(self.account(batch)),
                // The next batch received says how many events that was.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Like `recv` without waiting: None when nothing is queued (or closed).
    /// Tests read what a finished writer published with it.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Received> {
        loop {
            match self.rx.try_recv() {
                Ok(batch) => return Some(self.account(batch)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    fn account(&mut self, batch: Arc<Batch>) -> Received {
        let skipped = batch.seq.saturating_sub(self.next);
        self.next = self.next.max(batch.seq + batch.events.len() as u64);
        Received { skipped, batch }
    }

    /// Batches queued for this receiver.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<LiveEvent> {
        (0..n).map(|_| LiveEvent::new("exec", 1, "core")).collect()
    }

    #[tokio::test]
    async fn a_lagging_receiver_learns_how_many_events_it_missed() {
        let live = Live::new(2);
        live.publish(events(2));
        let mut feed = live.subscribe();
        for n in [3, 5, 7, 11] {
            live.publish(events(n));
        }
        // The ring kept the last two batches (7 and 11 events); 3 + 5 were
        // skipped, the 2 from before the subscription were never its own.
        let r = feed.recv().await.unwrap();
        assert_eq!((r.skipped, r.batch.events.len()), (8, 7));
        let r = feed.recv().await.unwrap();
        assert_eq!((r.skipped, r.batch.events.len()), (0, 11));
        for n in [1, 2, 4] {
            live.publish(events(n));
        }
        let r = feed.recv().await.unwrap();
        assert_eq!((r.skipped, r.batch.events.len()), (1, 2));
        assert!(feed.try_recv().is_some_and(|r| r.skipped == 0));
        assert!(feed.try_recv().is_none());
        drop(live);
        assert!(feed.recv().await.is_none());
    }
}
