//! `amqps://` against the real broker: a test CA with a server and a client certificate, and a
//! TLS-terminating proxy in front of RabbitMQ on 127.0.0.1:5672 (which itself speaks plain
//! AMQP), as a TLS listener of the broker or a load balancer would be.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bodflow::config::Tls;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA and the certificates it signed, as PEM files in a temporary folder.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    ca_der: CertificateDer<'static>,
    /// For `localhost` only (not `127.0.0.1`).
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: another test CA is another issuer, not a forgery of this one.
        static CAS: AtomicUsize = AtomicUsize::new(0);
        let name = format!("bodflow test CA {}", CAS.fetch_add(1, Ordering::SeqCst));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        let issue = |names: &[&str], usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
        };
        let (server, server_key) = issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = issue(&["bodflow-client"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            ca_der: ca.der().clone(),
            server_cert: server.der().clone(),
            server_key: server_key.serialize_der(),
            _dir: dir,
        }
    }

    /// `[amqp.tls]` trusting this CA, with the client certificate when `client`.
    pub fn tls(&self, client: bool) -> Tls {
        Tls {
            ca_file: Some(self.ca.clone()),
            cert_file: client.then(|| self.client_cert.clone()),
            key_file: client.then(|| self.client_key.clone()),
        }
    }
}

/// What a [`TlsProxy`] saw.
#[derive(Default)]
pub struct Seen {
    /// Handshakes completed (then relayed to the broker).
    pub sessions: AtomicUsize,
    /// Of those, the ones whose client presented a certificate.
    pub with_client_certificate: AtomicUsize,
    /// TLS handshakes that failed (a client that does not trust the server, one that
    /// presents no certificate when required).
    pub refused: AtomicUsize,
    /// Connections whose first byte was not a TLS handshake record (plain AMQP, say).
    pub not_tls: AtomicUsize,
}

impl Seen {
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }
    pub fn with_client_certificate(&self) -> usize {
        self.with_client_certificate.load(Ordering::SeqCst)
    }
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
    pub fn not_tls(&self) -> usize {
        self.not_tls.load(Ordering::SeqCst)
    }
}

/// Accepts TLS on a free port of 127.0.0.1 and relays each session to the broker on 5672.
pub struct TlsProxy {
    pub port: u16,
    pub seen: Arc<Seen>,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// With `require_client_certificate`, a client must present one the CA signed.
    pub async fn start(pki: &Pki, require_client_certificate: bool) -> TlsProxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::try_from(pki.server_key.clone()).unwrap();
        let config = builder
            .with_single_cert(vec![pki.server_cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = counts.clone();
                tokio::spawn(async move {
                    // A TLS record of type 22 (handshake) comes first; AMQP's header is "AMQP".
                    let mut first = [0u8; 1];
                    match client.peek(&mut first).await {
                        Ok(1) if first[0] == 0x16 => {}
                        Ok(1) => {
                            seen.not_tls.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        _ => return,
                    }
                    let mut client = match acceptor.accept(client).await {
                        Ok(client) => client,
                        Err(_) => {
                            seen.refused.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    seen.sessions.fetch_add(1, Ordering::SeqCst);
                    if client.get_ref().1.peer_certificates().is_some() {
                        seen.with_client_certificate.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                });
            }
        });
        TlsProxy { port, seen, accept }
    }

    /// `amqps://` to the broker's `vhost` through this proxy, by host name.
    pub fn url(&self, vhost: &str) -> String {
        format!("amqps://guest:guest@localhost:{}/{vhost}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
