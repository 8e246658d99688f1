//! Client limits and the memory budget, with the defaults each memory profile implies.
//!
//! This is the run-time view of `Broker.spec.memoryProfile` and `Broker.spec.advanced.clients`:
//! plain numbers the session and router use. It does not parse or range-check anything; that is
//! `validate`'s job, which starts from [`ClientLimits::for_profile`] and applies the
//! operator's overrides.

use super::resources::{MemoryProfile, QueueStrategy};

const MIB: u32 = 1024 * 1024;

impl MemoryProfile {
    /// The largest message the profile is sized for (broker-spec.md §7.3), the default
    /// [`ClientLimits::max_packet_size`] before the MQTT cap.
    pub const fn max_message_bytes(self) -> u32 {
        match self {
            MemoryProfile::Tiny => 4 * MIB,
            MemoryProfile::Low => 16 * MIB,
            MemoryProfile::Medium => 64 * MIB,
            MemoryProfile::High => 256 * MIB,
        }
    }

    /// The PUBLISH ingress buffer of one AIO backend worker (broker-spec.md §7.3), which is what
    /// one Gatehouse process budgets for queued message bytes.
    pub const fn ingress_buffer_bytes(self) -> usize {
        const MIB: usize = 1024 * 1024;
        match self {
            MemoryProfile::Tiny => 16 * MIB,
            MemoryProfile::Low => 64 * MIB,
            MemoryProfile::Medium => 576 * MIB,
            MemoryProfile::High => 2048 * MIB,
        }
    }
}

/// A bound on one subscriber's outbound queue (`subscriberQueueLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    /// At least 1.
    pub length: u64,
    /// What to do with a new message when the queue holds `length` messages.
    pub strategy: QueueStrategy,
}

/// Limits the broker imposes on clients and advertises in CONNACK.
///
/// Every field has a default (see [`ClientLimits::for_profile`]); `Broker.spec.advanced.clients`
/// overrides them one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Cap on the session expiry a client may ask for: CONNACK's Session Expiry Interval is
    /// `min(requested, this)`. Default `u32::MAX`, which in MQTT means "never expires", i.e. no
    /// cap.
    pub max_session_expiry_secs: u32,
    /// Cap on a PUBLISH's Message Expiry Interval; a message without one gets this. Default
    /// `None`: messages live until delivered or their session expires.
    pub max_message_expiry_secs: Option<u32>,
    /// Largest packet accepted from a client (advertised as Maximum Packet Size; a bigger one is
    /// answered with 0x95 Packet too large). Default: the profile's
    /// [`MemoryProfile::max_message_bytes`], capped to [`ClientLimits::MQTT_MAX_PACKET_SIZE`].
    pub max_packet_size: u32,
    /// The Receive Maximum the server advertises in CONNACK: how many QoS > 0 PUBLISHes a client
    /// may have unacknowledged towards the server. Default 1024.
    pub max_receive_maximum: u16,
    /// Cap on the client's keep-alive. A CONNECT with keep-alive 0 or above this gets a Server
    /// Keep Alive of this value, but only when it is below 65535. Default 65535: no cap.
    pub max_keep_alive_secs: u16,
    /// Default `None`; when set, [`ClientLimits::max_queued_messages`] is its length.
    pub subscriber_queue_limit: Option<QueueLimit>,
    /// Topic Alias Maximum advertised in CONNACK (client→server aliases). Default 64; 0 disables
    /// topic aliases.
    pub max_topic_aliases: u16,
    /// Cap on the server→client window of unacknowledged QoS > 0 deliveries. The effective window
    /// is `min(client's Receive Maximum, this)`; the default 65535 therefore means "whatever the
    /// client asked for".
    pub max_inflight: u16,
    /// Bound on one client's outbound queue (messages waiting for a free in-flight slot, or for
    /// an offline session). Default 10000, or `subscriberQueueLimit.length` when that is set.
    pub max_queued_messages: usize,
    /// Global budget, in bytes, for queued message payloads across all clients: the profile's
    /// [`MemoryProfile::ingress_buffer_bytes`]. As in AIO, backpressure begins at 75% of it
    /// ([`ClientLimits::backpressure_threshold_bytes`]): QoS 1/2 PUBLISHes are refused with 0x97
    /// Quota exceeded and QoS 0 ones are dropped.
    pub memory_budget_bytes: usize,
}

impl ClientLimits {
    /// The largest Remaining Length MQTT can encode; no packet size limit can usefully exceed it.
    pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;
    pub const DEFAULT_MAX_RECEIVE_MAXIMUM: u16 = 1024;
    pub const DEFAULT_MAX_TOPIC_ALIASES: u16 = 64;
    pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 10_000;

    /// The limits of a configuration that sets nothing but its memory profile.
    pub const fn for_profile(profile: MemoryProfile) -> ClientLimits {
        let max_message = profile.max_message_bytes();
        ClientLimits {
            max_session_expiry_secs: u32::MAX,
            max_message_expiry_secs: None,
            max_packet_size: if max_message < Self::MQTT_MAX_PACKET_SIZE {
                max_message
            } else {
                Self::MQTT_MAX_PACKET_SIZE
            },
            max_receive_maximum: Self::DEFAULT_MAX_RECEIVE_MAXIMUM,
            max_keep_alive_secs: u16::MAX,
            subscriber_queue_limit: None,
            max_topic_aliases: Self::DEFAULT_MAX_TOPIC_ALIASES,
            max_inflight: u16::MAX,
            max_queued_messages: Self::DEFAULT_MAX_QUEUED_MESSAGES,
            memory_budget_bytes: profile.ingress_buffer_bytes(),
        }
    }

    /// Queued bytes at which backpressure starts: 75% of the budget (broker-spec.md §7.3).
    pub const fn backpressure_threshold_bytes(&self) -> usize {
        self.memory_budget_bytes / 4 * 3
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits::for_profile(MemoryProfile::default())
    }
}
