//! TLS termination settings: reading certificate chains and private keys from PEM files (at
//! config load, so a reload re-reads them), choosing a certificate by SNI, and building the
//! rustls `ServerConfig` that a routing snapshot carries to the workers. Nothing here touches a
//! socket: [`session`] drives a connection's handshake and records on monoio.
//!
//! Protocol choices, fixed rather than configurable: TLS 1.2 and 1.3 only, the ring crypto
//! provider's default suites, ALPN `http/1.1`, and stateless session tickets (see
//! [`Acceptor::new`]).

pub mod session;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// Which of an entry's two files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        which: Which,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {message}", path.display())]
    Pem {
        which: Which,
        path: PathBuf,
        message: String,
    },
    #[error("{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no private key in it (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Unusable {
        which: Which,
        path: PathBuf,
        message: String,
    },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    /// The file the operator has to fix.
    pub fn which(&self) -> Which {
        match self {
            CertError::Read { which, .. }
            | CertError::Pem { which, .. }
            | CertError::Unusable { which, .. } => *which,
            CertError::NoCertificate { .. } => Which::Cert,
            CertError::NoKey { .. } | CertError::Mismatch { .. } => Which::Key,
        }
    }
}

/// A certificate chain with its private key, ready to sign handshakes. Compared by the chain
/// and a digest of the key, so that an unchanged reload compares equal without keeping key
/// bytes around; never printed or serialized.
#[derive(Clone)]
pub struct Identity {
    pub key: Arc<CertifiedKey>,
    key_digest: [u8; 32],
}

impl Identity {
    /// Reads the PEM chain at `cert` (leaf first) and the PEM private key at `key` (PKCS#8,
    /// PKCS#1 RSA or SEC1 EC), and checks that the key belongs to the leaf certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, CertError> {
        let read = |which, path: &Path| {
            std::fs::read(path).map_err(|source| CertError::Read {
                which,
                path: path.to_path_buf(),
                source,
            })
        };
        let pem_error = |which, path: &Path, e: pem::Error| CertError::Pem {
            which,
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let cert_pem = read(Which::Cert, cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(Which::Cert, cert, e))?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate {
                path: cert.to_path_buf(),
            });
        }
        let key_pem = read(Which::Key, key)?;
        let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(der) => der,
            Err(pem::Error::NoItemsFound) => {
                return Err(CertError::NoKey {
                    path: key.to_path_buf(),
                })
            }
            Err(e) => return Err(pem_error(Which::Key, key, e)),
        };
        let key_digest = digest(key_der.secret_der());
        let provider = provider();
        let signer = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| CertError::Unusable {
                which: Which::Key,
                path: key.to_path_buf(),
                message: format!("unsupported private key: {e}"),
            })?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::Mismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
            // The provider cannot tell (no public key for this key type): rustls accepts
            // the pair as it is, and so do we.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(CertError::Unusable {
                    which: Which::Cert,
                    path: cert.to_path_buf(),
                    message: format!("the first certificate cannot be used: {e}"),
                })
            }
        }
        Ok(Identity {
            key: Arc::new(certified),
            key_digest,
        })
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Identity) -> bool {
        self.key.cert == other.key.cert && self.key_digest == other.key_digest
    }
}

impl Eq for Identity {}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A name a certificate is served for: exact, or `*.example.com` (one label deep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    Exact(String),
    /// `*.example.com` is `Wildcard("example.com")`.
    Wildcard(String),
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerName::Exact(name) => f.write_str(name),
            ServerName::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// One `[[server.tls]]` entry, loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Empty for the default entry.
    pub server_names: Vec<ServerName>,
    pub identity: Identity,
}

/// For `/config`: the paths and names, never the key (nor the certificate bytes).
impl Serialize for Certificate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = self.server_names.iter().map(|n| n.to_string()).collect();
        let mut s = serializer.serialize_struct("Certificate", 4)?;
        s.serialize_field("cert", &self.cert)?;
        s.serialize_field("key", &self.key)?;
        s.serialize_field("server_names", &names)?;
        s.serialize_field("chain_length", &self.identity.key.cert.len())?;
        s.end()
    }
}

/// Picks the certificate for a ClientHello: the exact SNI name, then a wildcard for the name
/// minus its first label, then the default (also for clients that send no SNI, or a name no
/// entry lists, so that they see a certificate error rather than a bare handshake failure).
#[derive(Debug)]
pub struct Resolver {
    exact: ahash::AHashMap<String, Arc<CertifiedKey>>,
    wildcard: ahash::AHashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Resolver {
    /// `None` when `certs` is empty. The default is the entry without `server_names`, else the
    /// first (validation allows at most one without).
    pub fn new(certs: &[Certificate]) -> Option<Resolver> {
        let default = certs
            .iter()
            .find(|c| c.server_names.is_empty())
            .or_else(|| certs.first())?;
        let mut exact = ahash::AHashMap::new();
        let mut wildcard = ahash::AHashMap::new();
        for c in certs {
            for name in &c.server_names {
                let (map, name) = match name {
                    ServerName::Exact(n) => (&mut exact, n),
                    ServerName::Wildcard(n) => (&mut wildcard, n),
                };
                map.entry(name.clone())
                    .or_insert_with(|| Arc::clone(&c.identity.key));
            }
        }
        Some(Resolver {
            exact,
            wildcard,
            default: Arc::clone(&default.identity.key),
        })
    }

    /// The certificate for SNI `name` (any case).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        // rustls hands the name over lowercased already; this keeps the lookup right if it
        // ever does not, without allocating in the common case.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        let parent = name.split_once('.').map(|(_, rest)| rest);
        parent
            .and_then(|p| self.wildcard.get(p))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.pick(hello.server_name())))
    }
}

/// What a TLS listener hands each new connection: the rustls config of one snapshot.
#[derive(Debug, Clone)]
pub struct Acceptor {
    pub config: Arc<ServerConfig>,
}

impl Acceptor {
    /// Builds the server config for `certs` (`None` when there are none, or rustls refuses).
    ///
    /// Session resumption uses stateless tickets from `ticketer`: every worker and every
    /// snapshot shares one ring `Ticketer` (ChaCha20-Poly1305, keys rotated every 6 hours),
    /// so a client resumes on whichever worker its next connection lands on, also after a
    /// reload. The stateful session-ID cache is turned off: it would be a mutex shared by all
    /// workers, and TLS 1.2 clients without ticket support are rare. A resumed handshake
    /// costs one read lock inside the ticketer, per connection, never per request.
    pub fn new(certs: &[Certificate], ticketer: Option<Arc<dyn ProducesTickets>>) -> Option<Self> {
        let resolver = Resolver::new(certs)?;
        let built = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        let mut config = match built {
            Ok(builder) => builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(resolver)),
            Err(e) => {
                tracing::error!("TLS configuration refused by rustls: {e}");
                return None;
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        match ticketer {
            Some(t) => config.ticketer = t,
            None => tracing::warn!("no TLS session tickets: the ticket key could not be made"),
        }
        Some(Acceptor {
            config: Arc::new(config),
        })
    }

    /// The ticket keys, to carry over into the next snapshot's config (None if this one
    /// issues no tickets).
    pub fn ticketer(&self) -> Option<Arc<dyn ProducesTickets>> {
        let t = &self.config.ticketer;
        t.enabled().then(|| Arc::clone(t))
    }
}

/// A fresh ticket key set (None if the system's random source failed).
pub fn new_ticketer() -> Option<Arc<dyn ProducesTickets>> {
    rustls::crypto::ring::Ticketer::new().ok()
}

/// `upstreams.NAME.tls`: verified TLS to an upstream's targets. The CA bundle is read and the
/// rustls `ClientConfig` built at config load (so a reload re-reads the bundle), never per
/// connection. Only the roots in `ca` are trusted: this build has no access to the system's.
///
/// Protocol choices, as for listeners: TLS 1.2 and 1.3, the ring provider's default suites,
/// ALPN `http/1.1`, and rustls' default client session cache (resumption across connections,
/// shared by the workers: one short lock per new connection, never per request).
#[derive(Clone)]
pub struct Connector {
    /// The PEM bundle of trusted roots, as resolved.
    pub ca: PathBuf,
    /// The configured `server_name`; None: each target's IP address is the name verified.
    pub server_name: Option<String>,
    name: Option<rustls::pki_types::ServerName<'static>>,
    pub config: Arc<rustls::ClientConfig>,
    /// A digest of the bundle and the name: equal for an unchanged reload, and part of the
    /// connection pool's key, so a pooled connection is only reused by the settings that
    /// verified it.
    pub tag: u64,
}

impl Connector {
    /// Reads the roots at `ca` and builds the client config; the error says what is wrong
    /// with the file (the caller names the key).
    pub fn load(ca: &Path, server_name: Option<&str>) -> Result<Connector, String> {
        let name = server_name.map(parse_server_name).transpose()?;
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not valid PEM: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks of trusted roots)",
                ca.display()
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "{}: certificate {} cannot be a trusted root: {e}",
                    ca.display(),
                    i + 1
                )
            })?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration refused by rustls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut seed = pem;
        seed.push(0);
        seed.extend_from_slice(server_name.unwrap_or_default().as_bytes());
        let d = digest(&seed);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&d[..8]);
        Ok(Connector {
            ca: ca.to_path_buf(),
            server_name: server_name.map(str::to_string),
            name,
            config: Arc::new(config),
            // Never 0: the pool's key for plain connections.
            tag: u64::from_le_bytes(tag) | 1,
        })
    }

    /// The name to verify the certificate of `target` against (and to send as SNI when it
    /// is a DNS name).
    pub fn server_name_for(
        &self,
        target: std::net::SocketAddr,
    ) -> rustls::pki_types::ServerName<'static> {
        match &self.name {
            Some(name) => name.clone(),
            None => rustls::pki_types::ServerName::IpAddress(target.ip().into()),
        }
    }
}

/// A DNS name or an IP address, as certificates name them.
pub fn parse_server_name(text: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(text.to_string())
        .map_err(|_| format!("`{text}` is neither a DNS name nor an IP address"))
}

impl PartialEq for Connector {
    fn eq(&self, other: &Connector) -> bool {
        self.ca == other.ca && self.server_name == other.server_name && self.tag == other.tag
    }
}

impl Eq for Connector {}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// For `/config`: the bundle's path and the name (nothing secret is in either).
impl Serialize for Connector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Connector", 2)?;
        s.serialize_field("ca", &self.ca)?;
        s.serialize_field("server_name", &self.server_name)?;
        s.end()
    }
}
