//! Tests of the accept path without the binary: a real TLS handshake on loopback through
//! [`serve`], into a real connection actor, with an authenticator that records what it is
//! asked.

use std::sync::Arc;

use bytes::BytesMut;
use mqtt::{Connect, Packet, Properties, Protocol};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::auth::{AuthFuture, AuthRequest, Authenticator};
use crate::router::RouterLimits;

/// Lets everyone in, like [`AllowAll`], and reports every request.
struct Recording(mpsc::UnboundedSender<AuthRequest>);

impl Authenticator for Recording {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let _ = self.0.send(request.clone());
        AllowAll.authenticate(request)
    }
}

fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.der().clone(), Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    usage: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key.serialize_pem())
}

/// The chain verified in the handshake reaches authentication with the CONNECT; without a
/// client certificate there is none.
#[actix_rt::test]
async fn the_verified_client_chain_reaches_authentication() {
    let (server_ca, server_issuer) = ca();
    let (server_cert, server_key) = leaf(&server_issuer, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_ca, client_issuer) = ca();
    let (client_cert, client_key) = leaf(&client_issuer, ExtendedKeyUsagePurpose::ClientAuth);
    let config = Arc::new(
        tls::server_config(
            vec![server_cert],
            tls::parse_private_key(server_key.as_bytes()).unwrap(),
            Some(vec![client_ca]),
        )
        .unwrap(),
    );
    let (tx, mut requests) = mpsc::unbounded_channel();
    let metrics = Arc::new(Metrics::default());
    let endpoint = Arc::new(Endpoint {
        protocol: ListenerProtocol::Mqtt,
        tls: None,
        shared: Arc::new(Shared {
            router: Arc::new(LocalRouter::new(RouterLimits::default(), metrics.clone())),
            authenticator: Arc::new(Recording(tx)),
            authorizer: Arc::new(AllowAll),
            metrics,
            session_config: session_config(&ClientLimits::default()),
            listener_port: 8883,
            expiry_disconnect: false,
            live: Default::default(),
        }),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    for with_certificate in [true, false] {
        let accept = {
            let (config, endpoint) = (config.clone(), endpoint.clone());
            let listener = &listener;
            async move {
                let (stream, peer) = listener.accept().await.unwrap();
                serve(stream, peer, Some(config), &endpoint).await;
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_ca.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let client_config = if with_certificate {
            let key = tls::parse_private_key(client_key.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![client_cert.clone()], key.der().clone_key())
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_config))
                .connect(name, tcp)
                .await
                .unwrap();
            let mut out = BytesMut::new();
            let connect = Connect {
                protocol: Protocol::V5,
                clean_start: true,
                keep_alive: 60,
                client_id: format!("chain-{with_certificate}"),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            };
            mqtt::codec::encode(&Packet::Connect(Box::new(connect)), Protocol::V5, &mut out);
            tls.write_all(&out).await.unwrap();
            // The CONNACK's first byte: the broker decided.
            let mut first = [0u8; 1];
            tls.read_exact(&mut first).await.unwrap();
            assert_eq!(first[0], 0x20, "a CONNACK");
            tls
        };
        let (_, _tls) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(accept, connect)
        })
        .await
        .expect("handshake and CONNACK in time");
        let request = requests.recv().await.expect("an authentication request");
        let expected = with_certificate.then(|| vec![client_cert.clone()]);
        assert_eq!(request.tls_chain.as_deref().map(<[_]>::to_vec), expected);
        assert_eq!(request.listener_port, 8883);
    }
}
