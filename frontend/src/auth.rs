//! The authentication and authorization seams of a connection.
//!
//! [`Authenticator`] turns every credential a client presented into a typed outcome (allow with
//! a principal and a credential expiry, deny with a reason code, continue an enhanced
//! authentication exchange, or "cannot decide now"), never a bool. [`Authorizer`] decides
//! CONNECT and compiles the client's [`Permissions`], checked per packet without IO.
//!
//! This module holds the traits, the request/outcome types and the allow-all implementations
//! used when a port has no `authenticationRef` / `authorizationRef`. The gRPC client of the
//! authentication service is `authclient.rs`; compiled policies are `authz.rs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use mqtt::{Protocol, ReasonCode};
use rustls_pki_types::CertificateDer;

/// A secret byte string: usable, but never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    /// Credentials from CONNECT.
    Connect,
    /// AUTH 0x18 from the client during an enhanced authentication exchange before CONNACK.
    Continue,
    /// AUTH 0x19 after CONNACK.
    Reauthenticate,
}

/// Everything a client presented, as the authentication service needs it.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub kind: AuthKind,
    pub protocol: Protocol,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub method: Option<String>,
    pub data: Option<Secret>,
    pub listener_port: u16,
    pub peer: SocketAddr,
    /// The client certificate chain, leaf first, already verified against the port's trusted
    /// CAs during the TLS handshake. `None` without TLS or without a client certificate.
    pub tls_chain: Option<Arc<[CertificateDer<'static>]>>,
    /// Unique among this process's connections; the same id is used to register the live
    /// connection ([`Authenticator::watch`]).
    pub connection_id: u64,
    /// For [`AuthKind::Continue`]: what the previous [`AuthOutcome::Continue`] returned.
    pub continuation: Bytes,
}

/// Who the client is, for authorization and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    pub username: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// For tests: a principal from a username and attribute pairs.
#[cfg(test)]
pub(crate) fn test_principal(username: Option<&str>, attrs: &[(&str, &str)]) -> Principal {
    Principal {
        username: username.map(str::to_string),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[derive(Clone, Debug)]
pub enum AuthOutcome {
    Allow {
        principal: Principal,
        /// When the credential stops being valid; the connection is closed then.
        expiry: Option<SystemTime>,
        /// v5 authentication data to return (CONNACK or AUTH).
        data: Option<Bytes>,
        /// Whether AUTH 0x19 can renew the credential (not for X.509).
        can_reauthenticate: bool,
    },
    Deny {
        code: ReasonCode,
        reason: Option<String>,
    },
    /// Send AUTH 0x18 with this data and wait for the client's next AUTH; hand
    /// `continuation` back with it.
    Continue {
        data: Option<Bytes>,
        continuation: Bytes,
    },
    /// No decision could be made (no authentication service replica answered in time, or a
    /// dependency is down). CONNECT → 0x88 Server unavailable (3.1.1: 0x03), never an allow;
    /// re-authentication → AUTH 0x18, and the connection keeps its old deadline.
    Transient { reason: String },
}

/// A connection that passed authentication, registered with the authentication service so
/// that revocations and policy changes can reach it.
pub struct LiveConnection {
    pub connection_id: u64,
    pub client_id: String,
    pub principal: Principal,
    pub expiry: Option<SystemTime>,
    /// How the service closes it: `kick(code, reason)`.
    pub control: Arc<dyn crate::router::ConnControl>,
}

/// Dropping it unregisters the connection.
pub type WatchGuard = Box<dyn Send + Sync>;

pub type AuthFuture = Pin<Box<dyn Future<Output = AuthOutcome> + Send>>;

pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture;
    /// Register a live connection for pushed disconnects; `None` when nothing is pushed
    /// (ports without authentication).
    fn watch(&self, _live: LiveConnection) -> Option<WatchGuard> {
        None
    }
}

/// Ports without `authenticationRef`: everyone is let in ([broker-spec §1.1]; scenario 19).
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(std::future::ready(AuthOutcome::Allow {
            principal: Principal {
                username: request.username,
                attributes: BTreeMap::new(),
            },
            expiry: None,
            data: None,
            can_reauthenticate: false,
        }))
    }
}

/// A port's authorization: decides CONNECT once authentication has said who the client is,
/// and compiles what the client may do into [`Permissions`] the connection keeps.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err` carries the reason for the log; the client gets 0x87 (3.1.1: 0x05).
    fn connect(
        &self,
        client_id: &str,
        principal: &Principal,
    ) -> Result<Arc<dyn Permissions>, String>;
}

/// One client's compiled permissions, checked per PUBLISH and SUBSCRIBE without IO.
pub trait Permissions: Send + Sync + 'static {
    fn may_publish(&self, topic: &str) -> bool;
    /// `filter` as requested, possibly `$share/group/...`.
    fn may_subscribe(&self, filter: &str) -> bool;
    /// The identity that owns the client's sessions, when the model has one (Event Grid):
    /// its sessions are limited in number and cannot be taken over by another identity.
    fn session_owner(&self) -> Option<SessionOwner> {
        None
    }
}

/// Who owns a session, and how many sessions that identity may hold at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOwner {
    pub identity: Arc<str>,
    pub max_sessions: u32,
}

/// Ports without `authorizationRef`, or with one but no `authenticationRef` (broker-spec §1.2,
/// scenario 28): everything is allowed.
impl Authorizer for AllowAll {
    fn connect(&self, _: &str, _: &Principal) -> Result<Arc<dyn Permissions>, String> {
        Ok(Arc::new(AllowAll))
    }
}

impl Permissions for AllowAll {
    fn may_publish(&self, _: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _: &str) -> bool {
        true
    }
}
