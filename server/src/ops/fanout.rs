//! The fan-out of committed rows: the store's [`Listeners`], implemented over the hub.
//!
//! Each committed row becomes one `message` frame, encoded once with the protocol's
//! constructor; the frames of one topic go to the hub as one [`DurableRun`] (at most
//! [`MAX_RUN`] frames), so a subscriber gets one queue item and one wake-up per topic per
//! commit, not per message. A publisher's own rows are marked with its connection: its writer
//! skips them (no echo) but still advances its cursor past them.

use std::collections::HashMap;
use std::sync::Arc;

use tidings_protocol::ServerMessage;
use tidings_protocol::server::Message;

use crate::hub::{DurableRun, Hub};
use crate::store::{Commit, Listeners};
use crate::wire::Frame;

/// Most frames in one fan-out run (one queue slot of each subscriber): a queue of
/// `queue_capacity` slots then holds at most this many times as many frames, all shared.
pub const MAX_RUN: usize = 64;

/// Hands committed batches to the hub and tells the store who listens.
pub struct Fanout {
    hub: Arc<Hub>,
}

impl Fanout {
    /// Fan out through `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Fanout { hub }
    }
}

impl Listeners for Fanout {
    fn committed(&self, commit: &Commit<'_>) {
        // Rows of a topic have consecutive offsets in row order, so each run is contiguous;
        // runs of one topic are handed to the hub in offset order.
        let mut runs: Vec<DurableRun> = Vec::new();
        let mut open: HashMap<&str, usize> = HashMap::new();
        for (row, origin) in commit.rows.iter().zip(commit.origins) {
            let epoch = commit
                .heads
                .get(&row.topic)
                .map_or("", |h| h.epoch.as_str());
            let frame = ServerMessage::Message(Message::stored(
                &row.topic,
                row.data.clone(),
                &row.from,
                &row.timestamp,
                row.offset,
                epoch,
            ));
            let frame = (Frame::encode(&frame), *origin);
            let index = open
                .get(row.topic.as_ref())
                .copied()
                .filter(|&i| runs.get(i).is_some_and(|r| r.frames.len() < MAX_RUN));
            let index = index.unwrap_or_else(|| {
                runs.push(DurableRun {
                    topic: Arc::clone(&row.topic),
                    first: row.offset,
                    frames: Vec::with_capacity(MAX_RUN.min(commit.rows.len())),
                });
                open.insert(row.topic.as_ref(), runs.len() - 1);
                runs.len() - 1
            });
            if let Some(run) = runs.get_mut(index) {
                debug_assert_eq!(run.first + run.frames.len() as u64, row.offset);
                run.frames.push(frame);
            }
        }
        for run in runs {
            self.hub.publish_durable(Arc::new(run), commit.started);
        }
    }

    fn released(&self) -> Vec<Arc<str>> {
        self.hub.take_released().into_iter().collect()
    }

    fn free_if_unsubscribed(&self, topic: &str, free: &mut dyn FnMut()) -> bool {
        self.hub.free_if_unsubscribed(topic, free)
    }

    fn ephemeral(&self, topic: &str, frame: &str) {
        let frame = Frame::text(frame.to_owned());
        self.hub
            .publish(topic, None, || frame, std::time::Instant::now());
    }

    fn rebased(&self, topic: &Arc<str>, from: u64) {
        self.hub.retrack(topic, from);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::hub::{Mailbox, Outbound};
    use crate::metrics::Metrics;
    use crate::store::{Head, Row};

    fn row(topic: &str, offset: u64) -> Row {
        Row {
            topic: Arc::from(topic),
            offset,
            data: tidings_protocol::Json::to_json(&offset).expect("json"),
            from: "c1".into(),
            timestamp: "t".into(),
            key: None,
            event_type: None,
        }
    }

    #[test]
    fn a_commit_becomes_one_run_per_topic_with_origins_and_epochs() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
        let m = Mailbox::new(1, 8);
        hub.subscribe("a", &m);
        hub.subscribe("b", &m);
        let rows: Vec<Row> = (1..=70).map(|i| row("a", i)).chain([row("b", 5)]).collect();
        let origins: Vec<Option<u64>> = rows.iter().map(|r| (r.offset == 2).then_some(9)).collect();
        let mut heads = HashMap::new();
        for (t, e) in [("a", "ea"), ("b", "eb")] {
            heads.insert(
                Arc::from(t),
                Head {
                    epoch: e.into(),
                    latest: 0,
                    first: 1,
                },
            );
        }
        Fanout::new(Arc::clone(&hub)).committed(&Commit {
            rows: &rows,
            origins: &origins,
            heads: &heads,
            started: Instant::now(),
        });
        let mut runs = Vec::new();
        while let Some(Outbound::Durable(run)) = m.try_recv() {
            runs.push(run);
        }
        let shape: Vec<(&str, u64, usize)> = runs
            .iter()
            .map(|r| (r.topic.as_ref(), r.first, r.frames.len()))
            .collect();
        assert_eq!(shape, [("a", 1, 64), ("a", 65, 6), ("b", 5, 1)]);
        assert_eq!(runs[0].frames[1].1, Some(9), "the publisher of offset 2");
        let first = ServerMessage::decode(runs[2].frames[0].0.json()).expect("frame");
        let ServerMessage::Message(m) = first else {
            panic!("not a message")
        };
        assert_eq!((m.offset, m.epoch.as_deref()), (Some(5), Some("eb")));
    }
}
