//! The outbound in-flight window of one session: QoS 1/2 deliveries sent to the client and not
//! yet acknowledged, in the order they were first sent, found by packet identifier in O(1).
//!
//! Order matters because [MQTT-4.4.0-1] resends them in that order on reconnect; lookup by
//! packet id matters because the window can be as large as 65535 (Receive Maximum) and every
//! PUBACK/PUBREC/PUBCOMP and every packet-id allocation looks an id up. A linear scan made a
//! subscriber with a full window cost O(window) per message.
//!
//! This is only the container; the QoS state machine stays in `session.rs`. An empty queue
//! owns no heap memory (idle connections are most connections).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::session::Inflight;

/// Ordered by first send, indexed by packet id. Entries removed out of order leave a hole that
/// is dropped once it reaches the front, or by a compaction once holes outnumber entries — so
/// a client that never acknowledges its oldest message cannot grow the queue without bound.
#[derive(Clone, Default)]
pub struct InflightQueue {
    /// `slots[i]` has sequence number `base + i`; `None` is a hole.
    slots: VecDeque<Option<(u16, Inflight)>>,
    base: u64,
    /// Packet id → sequence number of its slot.
    index: HashMap<u16, u64, BuildHasherDefault<PacketIdHasher>>,
}

/// Holes tolerated before compaction, on top of one per live entry.
const SLACK: usize = 32;
/// Slots an emptied queue may keep allocated.
const KEEP_WHEN_EMPTY: usize = 8;

impl InflightQueue {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, packet_id: u16) -> bool {
        self.index.contains_key(&packet_id)
    }

    /// Append an entry. A packet id already present is replaced (and moves to the back); the
    /// session never does that, but a restored state is not trusted to be well formed.
    pub fn push_back(&mut self, packet_id: u16, entry: Inflight) {
        self.remove(packet_id);
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(Some((packet_id, entry)));
        self.index.insert(packet_id, seq);
    }

    pub fn get(&self, packet_id: u16) -> Option<&Inflight> {
        let i = self.slot(packet_id)?;
        self.slots[i].as_ref().map(|(_, e)| e)
    }

    pub fn get_mut(&mut self, packet_id: u16) -> Option<&mut Inflight> {
        let i = self.slot(packet_id)?;
        self.slots[i].as_mut().map(|(_, e)| e)
    }

    pub fn remove(&mut self, packet_id: u16) -> Option<Inflight> {
        let seq = self.index.remove(&packet_id)?;
        let i = (seq - self.base) as usize;
        let (_, entry) = self.slots[i].take()?;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        if self.slots.len() > 2 * self.index.len() + SLACK {
            self.compact();
        }
        if self.index.is_empty() && self.slots.capacity() > KEEP_WHEN_EMPTY {
            // Give a burst's memory back: an idle session should own next to none. A small
            // window is kept so that one message at a time does not allocate per message.
            *self = InflightQueue::default();
        }
        Some(entry)
    }

    /// Entries in the order they were first sent.
    pub fn iter(&self) -> impl Iterator<Item = &(u16, Inflight)> {
        self.slots.iter().flatten()
    }

    fn slot(&self, packet_id: u16) -> Option<usize> {
        self.index
            .get(&packet_id)
            .map(|seq| (seq - self.base) as usize)
    }

    fn compact(&mut self) {
        let live: VecDeque<_> = std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .map(Some)
            .collect();
        self.base = 0;
        self.index.clear();
        for (i, slot) in live.iter().enumerate() {
            if let Some((pid, _)) = slot {
                self.index.insert(*pid, i as u64);
            }
        }
        self.slots = live;
    }
}

impl IntoIterator for InflightQueue {
    type Item = (u16, Inflight);
    type IntoIter =
        std::iter::Flatten<std::collections::vec_deque::IntoIter<Option<(u16, Inflight)>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.into_iter().flatten()
    }
}

impl FromIterator<(u16, Inflight)> for InflightQueue {
    fn from_iter<I: IntoIterator<Item = (u16, Inflight)>>(iter: I) -> Self {
        let mut q = InflightQueue::default();
        for (pid, entry) in iter {
            q.push_back(pid, entry);
        }
        q
    }
}

impl fmt::Debug for InflightQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Packet ids are allocated by the server, not chosen by the peer, so they need no
/// flooding-resistant hash: a multiply spreads consecutive ids over the buckets.
#[derive(Default)]
pub struct PacketIdHasher(u64);

impl Hasher for PacketIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::session::{Delivery, InflightStage, Message};
    use crate::{Properties, QoS};

    fn entry(n: u8) -> Inflight {
        Inflight {
            delivery: Delivery {
                message: Arc::new(Message {
                    topic: "t".into(),
                    payload: Bytes::from(vec![n]),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Properties::default(),
                    expires_at: None,
                    origin: 0,
                }),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                shared: None,
                tag: u64::from(n),
            },
            stage: InflightStage::AwaitPubAck,
        }
    }

    fn ids(q: &InflightQueue) -> Vec<u16> {
        q.iter().map(|(pid, _)| *pid).collect()
    }

    #[test]
    fn keeps_send_order_and_finds_by_packet_id() {
        let mut q = InflightQueue::default();
        for pid in [5, 1, 9, 2] {
            q.push_back(pid, entry(pid as u8));
        }
        assert_eq!(ids(&q), [5, 1, 9, 2]);
        assert_eq!(q.get(9).unwrap().delivery.tag, 9);
        q.get_mut(1).unwrap().stage = InflightStage::AwaitPubComp;
        assert_eq!(q.get(1).unwrap().stage, InflightStage::AwaitPubComp);
        assert_eq!(q.remove(9).unwrap().delivery.tag, 9);
        assert!(q.remove(9).is_none(), "removed once");
        assert!(!q.contains(9));
        assert_eq!(ids(&q), [5, 1, 2]);
        assert_eq!(q.remove(5).unwrap().delivery.tag, 5);
        assert_eq!(ids(&q), [1, 2]);
        assert_eq!(q.len(), 2);
        let owned: Vec<u16> = q.into_iter().map(|(pid, _)| pid).collect();
        assert_eq!(owned, [1, 2]);
    }

    #[test]
    fn a_reused_packet_id_replaces_the_old_entry() {
        let mut q: InflightQueue = [(1, entry(1)), (2, entry(2))].into_iter().collect();
        q.push_back(1, entry(7));
        assert_eq!(ids(&q), [2, 1]);
        assert_eq!(q.get(1).unwrap().delivery.tag, 7);
        assert_eq!(q.len(), 2);
    }

    /// A client that never acknowledges its oldest message while acknowledging everything
    /// after it must not grow the queue: holes behind a stuck front are compacted away.
    #[test]
    fn holes_behind_a_stuck_front_are_bounded() {
        let mut q = InflightQueue::default();
        q.push_back(1, entry(1));
        for round in 0..10_000u32 {
            let pid = (round % 60_000) as u16 + 2;
            q.push_back(pid, entry(0));
            assert!(q.remove(pid).is_some());
            assert!(q.slots.len() <= 2 * q.len() + SLACK + 1, "round {round}");
        }
        assert_eq!(ids(&q), [1]);
        assert_eq!(q.get(1).unwrap().delivery.tag, 1);
    }

    #[test]
    fn an_emptied_queue_gives_a_bursts_memory_back() {
        let mut q = InflightQueue::default();
        for pid in 1..=100 {
            q.push_back(pid, entry(0));
        }
        for pid in (1..=100).rev() {
            q.remove(pid);
        }
        assert!(q.is_empty());
        assert_eq!(q.slots.capacity(), 0);
        assert_eq!(q.index.capacity(), 0);
    }
}
