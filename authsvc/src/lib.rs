//! # authsvc — the Gatehouse authentication service
//!
//! Decides who a client is. A frontend sends every credential a client presented
//! ([`Credentials`]); the port's `BrokerAuthentication` policy — an ordered list of methods —
//! produces one [`Decision`]. The first method for which the credentials are *relevant* decides
//! (broker-spec §2.2): a relevant but invalid credential is denied and does not fall through;
//! when no method is relevant the client is denied (0x87).
//!
//! ## Layout
//! - this file: the domain types and the [`Method`] trait every method implements;
//! - [`chain`]: a compiled policy (ordered methods) and the fall-through rule;
//! - [`policy`]: `BrokerAuthentication` documents → compiled chains, with errors naming fields;
//! - [`methods`]: one module per method (X.509, ServiceAccountToken, JWT, Custom);
//! - [`grpc`]: the tonic service (`Authenticate`, `Watch`) and the configuration poller;
//!   generated types stop there.
//!
//! This crate does not speak MQTT on the wire and holds no connections; expiry is enforced by
//! the frontend holding the connection, with the deadline this service returns.

pub mod chain;
pub mod grpc;
pub mod methods;
pub mod policy;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;

/// A secret byte string: usable, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

/// Why the frontend is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Credentials from CONNECT.
    Connect,
    /// AUTH 0x18 from the client during an enhanced authentication exchange before CONNACK.
    Continue,
    /// AUTH 0x19 after CONNACK: the client renews its credential.
    Reauthenticate,
}

/// Everything a client presented, as the frontend collected it.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub kind: Kind,
    /// 3 (3.1), 4 (3.1.1) or 5.
    pub protocol_version: u8,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// v5 Authentication Method (CONNECT or AUTH).
    pub method: Option<String>,
    /// v5 Authentication Data (CONNECT or AUTH).
    pub data: Option<Secret>,
    /// The TLS client chain the frontend verified, DER, leaf first. Empty without a client
    /// certificate.
    pub tls_chain: Vec<Vec<u8>>,
    pub listener_port: u16,
    pub peer: Option<SocketAddr>,
    /// For [`Kind::Continue`]: what the previous [`Decision::Continue`] returned.
    pub continuation: Bytes,
}

impl Credentials {
    /// A v5 CONNECT with nothing in it; tests and callers fill in what they need.
    pub fn connect(client_id: &str) -> Credentials {
        Credentials {
            kind: Kind::Connect,
            protocol_version: 5,
            client_id: client_id.to_string(),
            username: None,
            password: None,
            method: None,
            data: None,
            tls_chain: Vec::new(),
            listener_port: 0,
            peer: None,
            continuation: Bytes::new(),
        }
    }
}

/// Who the client is, for authorization and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The name authorization rules match as `usernames` (X.509: leaf CN).
    pub username: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A successful authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub principal: Principal,
    /// When the credential stops being valid; `None` = never.
    pub expiry: Option<SystemTime>,
    /// v5 Authentication Data to send back (CONNACK or AUTH).
    pub data: Option<Bytes>,
    /// Whether AUTH 0x19 can renew it (X.509 cannot: the credential is the TLS session).
    pub can_reauthenticate: bool,
}

/// What one method, or a whole policy, decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// These credentials are not for this method; try the next one.
    NotRelevant,
    Allow(Grant),
    /// Refused with this MQTT v5 reason code (the frontend maps it for 3.1.1).
    Deny {
        code: u8,
        reason: String,
    },
    /// Multi-step enhanced authentication: send AUTH 0x18 with `data`, and pass
    /// `continuation` back with the client's answer.
    Continue {
        data: Option<Bytes>,
        continuation: Bytes,
    },
    /// No decision possible now (a dependency is down). CONNECT → 0x88 Server unavailable;
    /// re-authentication → AUTH 0x18, connection kept until the old expiry.
    Transient {
        reason: String,
    },
}

/// MQTT v5 reason codes the service uses.
pub mod code {
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
}

impl Decision {
    pub fn deny(code: u8, reason: impl Into<String>) -> Decision {
        Decision::Deny {
            code,
            reason: reason.into(),
        }
    }

    pub fn not_authorized(reason: impl Into<String>) -> Decision {
        Decision::deny(code::NOT_AUTHORIZED, reason)
    }
}

pub type DecisionFuture<'a> = Pin<Box<dyn Future<Output = Decision> + Send + 'a>>;

/// One authentication method of a policy.
///
/// `authenticate` first decides relevance (return [`Decision::NotRelevant`] quickly when the
/// credentials are not for this method), then validity. It must not panic on any input, must
/// bound its own waiting (an unreachable dependency is `NotRelevant` for Custom on CONNECT and
/// `Transient` otherwise), and must never log a secret.
pub trait Method: Send + Sync + 'static {
    /// `X509`, `ServiceAccountToken`, `Custom`, `JWT`: for logs and the principal.
    fn name(&self) -> &'static str;
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> DecisionFuture<'a>;
}

/// For tests: a method that lets everyone in (a stand-in for "some other method" in chains).
#[cfg(test)]
pub(crate) struct AllowEveryone;

#[cfg(test)]
impl Method for AllowEveryone {
    fn name(&self) -> &'static str {
        "AllowEveryone"
    }
    fn authenticate<'a>(&'a self, _: &'a Credentials) -> DecisionFuture<'a> {
        Box::pin(std::future::ready(Decision::Allow(Grant {
            principal: Principal::default(),
            expiry: None,
            data: None,
            can_reauthenticate: true,
        })))
    }
}
