//! A throwaway certificate authority for the TLS tests (rcgen): a CA of its own per `Pki`, and
//! leaf certificates it signs, in PEM files the gateway reads (`#[path]`-included beside
//! `gateway.rs`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::gateway::TempFile;

/// A test CA.
pub struct Pki {
    ca: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as a PEM file (an upstream's `ca`).
    pub pem: TempFile,
}

/// A leaf certificate and its key, in PEM files.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert: TempFile,
    pub key: TempFile,
}

impl Pki {
    pub fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Each CA its own name: a stranger CA named like the real one would be taken for
        // the issuer and fail on the signature instead of being unknown.
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringgate test CA {n}"));
        let ca = params.self_signed(&key).unwrap();
        let pem = TempFile::new("pem", ca.pem().as_bytes());
        Pki { ca, key, pem }
    }

    /// A leaf for `names` (DNS names, wildcards or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.join(" "));
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert: TempFile::new("crt", cert.pem().as_bytes()),
            key: TempFile::new("key", key.serialize_pem().as_bytes()),
        }
    }

    /// A trust store holding only this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl Leaf {
    /// The private key, for a rustls server.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key.path).unwrap()
    }
}
