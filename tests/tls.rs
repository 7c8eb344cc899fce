//! TLS termination end to end: the real binary with a plain and a TLS listener, certificates
//! made for the test by rcgen (a test CA and leaves signed by it), a rustls client, and a real
//! upstream. Every scenario runs on the io_uring driver and on epoll. The config checks at the
//! end need no gateway.

#[path = "common/config_check.rs"]
mod config_check;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/pki.rs"]
mod pki;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use config_check::reject;
use gateway::{
    closed, get_on, on_both_drivers, read_response, scrape, Gateway, TempFile, Upstream, PATIENCE,
};
use pki::{Leaf, Pki};
use ringgate::config;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

impl Leaf {
    /// Writes `other`'s certificate and key over this leaf's files (a renewal on disk).
    fn replace_with(&self, other: &Leaf) {
        std::fs::copy(&other.cert.path, &self.cert.path).unwrap();
        std::fs::copy(&other.key.path, &self.key.path).unwrap();
    }
}

/// The gateway's three certificates: the default (no server_names), `a.example`, and
/// `*.b.example`.
struct Certs {
    pki: Pki,
    default: Leaf,
    a: Leaf,
    b: Leaf,
}

impl Certs {
    fn new() -> Certs {
        let pki = Pki::new();
        Certs {
            default: pki.leaf(&["default.example"]),
            a: pki.leaf(&["a.example"]),
            b: pki.leaf(&["*.b.example"]),
            pki,
        }
    }
}

fn config(driver: &str, upstream: SocketAddr, certs: &Certs) -> String {
    let path = |f: &TempFile| f.path.display().to_string();
    format!(
        r#"
[server]
listen = ["{{listen}}", {{ addr = "127.0.0.1:0", tls = true }}]
workers = 2
pin = false
driver = "{driver}"
header_timeout = "2s"

[[server.tls]]
cert = "{dc}"
key = "{dk}"

[[server.tls]]
cert = "{ac}"
key = "{ak}"
server_names = ["a.example"]

[[server.tls]]
cert = "{bc}"
key = "{bk}"
server_names = ["*.b.example"]

[admin]
listen = "127.0.0.1:0"

[upstreams.backend]
targets = ["{upstream}"]
read_timeout = "2s"

[[routes]]
path_prefix = "/"
upstream = "backend"
"#,
        dc = path(&certs.default.cert),
        dk = path(&certs.default.key),
        ac = path(&certs.a.cert),
        ak = path(&certs.a.key),
        bc = path(&certs.b.cert),
        bk = path(&certs.b.key),
    )
}

/// The gateway with its TLS and admin addresses.
struct Running {
    gw: Gateway,
    tls: SocketAddr,
    admin: SocketAddr,
}

fn start(driver: &str, upstream: SocketAddr, certs: &Certs) -> Running {
    let mut gw = Gateway::start(&config(driver, upstream, certs));
    let addr_in = |line: String, after: &str| -> SocketAddr {
        let rest = line.rsplit(after).next().unwrap();
        rest.trim().trim_end_matches(" (tls)").parse().unwrap()
    };
    let tls = addr_in(gw.wait_for_line(" (tls)"), "listening on ");
    let admin = gw.admin_addr();
    Running { gw, tls, admin }
}

/// A client that checks the gateway's certificate against the test CA.
fn verifying(pki: &Pki) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client that takes any certificate, to see which one the gateway picks; `sni: false`
/// sends no server name at all.
fn accepting(sni: bool) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
    config.enable_sni = sni;
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake.
fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The leaf certificate the gateway presented.
fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

fn failures(admin: SocketAddr, reason: &str) -> f64 {
    let name = format!("ringgate_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    scrape(admin).get(&name).copied().unwrap_or(0.0)
}

on_both_drivers! {
    proxied_requests_over_tls(driver) {
        let big = "x".repeat(200 * 1024);
        let body = big.clone();
        let up = Upstream::spawn(move |seen, s| {
            let reply = if seen.head.starts_with("GET /big") { body.as_str() } else { "hello" };
            let echo = String::from_utf8_lossy(&seen.body);
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}{echo}",
                reply.len() + echo.len()
            );
            s.write_all(r.as_bytes()).is_ok()
        });
        let certs = Certs::new();
        let run = start(driver, up.addr, &certs);
        let client = verifying(&certs.pki);
        let tls = connect(run.tls, &client, "a.example").unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut r = BufReader::new(tls);
        let (status, head, body) = get_on(&mut r, "/one");
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "{head}");
        let seen = up.next_arrival();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{}", seen.head);

        // Keep-alive on the same connection: a body up (relayed from the TLS side) and a
        // 200 KiB body down (encrypted in several slices).
        let post = b"POST /p HTTP/1.1\r\nHost: api.example\r\nContent-Length: 11\r\n\r\nhello world";
        r.get_mut().write_all(post).unwrap();
        let (status, _, body) = read_response(&mut r);
        assert_eq!((status, body.as_slice()), (200, &b"hellohello world"[..]));
        let (status, _, body) = get_on(&mut r, "/big");
        assert_eq!((status, body.len()), (200, big.len()));
        assert!(body == big.as_bytes());

        // The plain listener still says http.
        let mut plain = run.gw.connect();
        plain.write_all(b"GET /plain HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut BufReader::new(plain)).0, 200);
        let seen = up.requests();
        let last = seen.last().unwrap();
        assert!(last.head.starts_with("GET /plain"));
        assert_eq!(last.header("x-forwarded-proto"), Some("http"));

        // A second connection from the same client resumes with a session ticket (the
        // client has read the tickets along with the responses above).
        let again = connect(run.tls, &client, "a.example").unwrap();
        assert_eq!(again.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let mut r2 = BufReader::new(again);
        assert_eq!(get_on(&mut r2, "/resumed").0, 200);
        let m = scrape(run.admin);
        assert!(m["ringgate_tls_handshakes_total{kind=\"resumed\"}"] >= 1.0, "{m:?}");
        assert!(m["ringgate_tls_handshakes_total{kind=\"full\"}"] >= 1.0, "{m:?}");
    }

    sni_picks_the_certificate(driver) {
        let up = Upstream::ok("ok");
        let certs = Certs::new();
        let run = start(driver, up.addr, &certs);
        let any = accepting(true);
        for (name, want) in [
            ("a.example", &certs.a),
            ("x.b.example", &certs.b),
            // A wildcard covers one label, not the parent nor two labels.
            ("b.example", &certs.default),
            ("y.x.b.example", &certs.default),
            ("unknown.example", &certs.default),
            ("default.example", &certs.default),
        ] {
            let tls = connect(run.tls, &any, name).unwrap();
            assert!(presented(&tls) == want.der, "SNI {name} got the wrong certificate");
        }
        let tls = connect(run.tls, &accepting(false), "a.example").unwrap();
        assert!(presented(&tls) == certs.default.der, "no SNI gets the default");
        // And a verifying client accepts what it gets for its name.
        let mut r = BufReader::new(connect(run.tls, &verifying(&certs.pki), "z.b.example").unwrap());
        assert_eq!(get_on(&mut r, "/").0, 200);
    }

    reload_serves_new_certificates_to_new_connections(driver) {
        let up = Upstream::ok("ok");
        let certs = Certs::new();
        let mut run = start(driver, up.addr, &certs);
        let client = verifying(&certs.pki);
        let kept = connect(run.tls, &client, "default.example").unwrap();
        assert!(presented(&kept) == certs.default.der);
        let mut kept = BufReader::new(kept);
        assert_eq!(get_on(&mut kept, "/before").0, 200);

        let renewed = certs.pki.leaf(&["default.example", "renewed.example"]);
        certs.default.replace_with(&renewed);
        run.gw.signal("HUP");
        run.gw.wait_for_nth_line("reloaded", 1);

        let fresh = connect(run.tls, &verifying(&certs.pki), "renewed.example").unwrap();
        assert!(presented(&fresh) == renewed.der, "a new connection gets the renewed certificate");
        let mut fresh = BufReader::new(fresh);
        assert_eq!(get_on(&mut fresh, "/new").0, 200);
        // The connection from before the reload carries on.
        assert_eq!(get_on(&mut kept, "/after").0, 200);

        // A broken key on disk: the reload is refused and TLS keeps working.
        std::fs::write(&certs.a.key.path, b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n").unwrap();
        run.gw.signal("HUP");
        let refusal = run.gw.wait_for_line("reload failed");
        assert!(refusal.contains("server.tls[1].key"), "{refusal}");
        let mut r = BufReader::new(connect(run.tls, &client, "a.example").unwrap());
        assert_eq!(get_on(&mut r, "/still").0, 200);
    }

    garbage_is_counted_and_the_workers_keep_serving(driver) {
        let up = Upstream::ok("ok");
        let certs = Certs::new();
        let run = start(driver, up.addr, &certs);
        // Plain HTTP to the TLS port, then random bytes, on several connections so both
        // workers see some.
        for i in 0..4 {
            let mut s = TcpStream::connect(run.tls).unwrap();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: api.example\r\n\r\n").unwrap();
            } else {
                s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0]).unwrap();
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            // At most an alert record, never an HTTP answer.
            assert!(rest.is_empty() || rest[0] == 0x15, "{rest:?}");
        }
        // A client that never finishes its handshake is cut at header_timeout.
        let mut slow = TcpStream::connect(run.tls).unwrap();
        slow.set_read_timeout(Some(PATIENCE)).unwrap();
        slow.write_all(&[0x16, 0x03, 0x01]).unwrap();
        assert!(closed(&mut slow));

        let mut r = BufReader::new(connect(run.tls, &verifying(&certs.pki), "a.example").unwrap());
        assert_eq!(get_on(&mut r, "/").0, 200);
        let m = scrape(run.admin);
        let bad = m.get("ringgate_tls_handshake_failures_total{reason=\"bad_message\"}").copied().unwrap_or(0.0);
        assert!(bad >= 4.0, "{m:?}");
        assert_eq!(failures(run.admin, "timeout"), 1.0);
    }

    tls_1_1_clients_are_refused(driver) {
        let up = Upstream::ok("ok");
        let certs = Certs::new();
        let run = start(driver, up.addr, &certs);
        let mut s = TcpStream::connect(run.tls).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.write_all(&tls11_client_hello()).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        // A fatal alert (content type 21), then the close.
        assert_eq!(reply.first(), Some(&0x15), "{reply:?}");
        assert_eq!(failures(run.admin, "incompatible"), 1.0, "{:?}", scrape(run.admin));
        assert_eq!(up.requests().len(), 0);
    }

    websocket_over_tls(driver) {
        let up = Upstream::websocket_echo();
        let certs = Certs::new();
        let run = start(driver, up.addr, &certs);
        let tls = connect(run.tls, &verifying(&certs.pki), "a.example").unwrap();
        let mut r = BufReader::new(tls);
        r.get_mut().write_all(b"GET /ws HTTP/1.1\r\nHost: api.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let (status, head, _) = read_response(&mut r);
        assert_eq!(status, 101, "{head}");
        assert_eq!(up.requests()[0].header("x-forwarded-proto"), Some("https"));
        let large = vec![0x42u8; 100 * 1024];
        for frame in [&b"\x81\x05hello"[..], b"\x82\x03\x01\x02\x03", &large] {
            r.get_mut().write_all(frame).unwrap();
            let mut back = vec![0u8; frame.len()];
            r.read_exact(&mut back).unwrap();
            assert!(back == frame);
        }
        // The client closes: the gateway closes the upstream and says close_notify.
        r.get_mut().conn.send_close_notify();
        r.get_mut().flush().unwrap();
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}

/// A ClientHello offering only TLS 1.0 and 1.1 (no supported_versions extension), with
/// suites both versions know.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version: TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Accepts every certificate (the SNI tests look at which one came, not whether it is valid).
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---- config checks: no gateway needed ----

fn with_tls(listen: &str, entries: &str) -> String {
    format!("[server]\nlisten = [{listen}]\n{entries}")
}

fn entry(cert: &TempFile, key: &TempFile, names: &str) -> String {
    format!(
        "[[server.tls]]\ncert = \"{}\"\nkey = \"{}\"\n{names}",
        cert.path.display(),
        key.path.display()
    )
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let pki = Pki::new();
    let one = pki.leaf(&["one.example"]);
    let two = pki.leaf(&["two.example"]);
    let tls_listen = r#"{ addr = "127.0.0.1:8443", tls = true }"#;

    // A TLS listener needs a certificate.
    let (line, column, key, message) =
        reject(&with_tls(&format!("\"127.0.0.1:8080\", {tls_listen}"), ""));
    assert_eq!((line, column, key.as_str()), (2, 29, "server.listen[1]"));
    assert!(message.contains("[[server.tls]]"), "{message}");

    // Unreadable file.
    let missing = format!(
        "[[server.tls]]\ncert = \"/nonexistent/ringgate.crt\"\nkey = \"{}\"\n",
        one.key.path.display()
    );
    let (line, column, key, message) = reject(&with_tls(tls_listen, &missing));
    assert_eq!((line, column, key.as_str()), (4, 8, "server.tls[0].cert"));
    assert!(
        message.contains("cannot read /nonexistent/ringgate.crt"),
        "{message}"
    );

    // Not PEM, or no certificate in it.
    let junk = TempFile::new("crt", b"hello\n");
    let (_, _, key, message) = reject(&with_tls(tls_listen, &entry(&junk, &one.key, "")));
    assert_eq!(key, "server.tls[0].cert");
    assert!(message.contains("no certificate"), "{message}");
    let bad = TempFile::new(
        "crt",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    let (_, _, key, message) = reject(&with_tls(tls_listen, &entry(&bad, &one.key, "")));
    assert_eq!(key, "server.tls[0].cert");
    assert!(message.contains("not valid PEM"), "{message}");
    let (_, _, key, message) = reject(&with_tls(tls_listen, &entry(&one.cert, &one.cert, "")));
    assert_eq!(key, "server.tls[0].key");
    assert!(message.contains("no private key"), "{message}");

    // The key of another certificate.
    let (line, column, key, message) =
        reject(&with_tls(tls_listen, &entry(&one.cert, &two.key, "")));
    assert_eq!((line, column, key.as_str()), (5, 7, "server.tls[0].key"));
    assert!(message.contains("does not match"), "{message}");

    // Two defaults, a name claimed twice, a bad name.
    let twice = format!(
        "{}{}",
        entry(&one.cert, &one.key, ""),
        entry(&two.cert, &two.key, "")
    );
    let (_, _, key, message) = reject(&with_tls(tls_listen, &twice));
    assert_eq!(key, "server.tls[1]");
    assert!(
        message.contains("only one entry may leave out"),
        "{message}"
    );
    let names = |n: &str| format!("server_names = [{n}]\n");
    let dup = format!(
        "{}{}",
        entry(&one.cert, &one.key, &names("\"*.x.example\"")),
        entry(
            &two.cert,
            &two.key,
            &names("\"a.example\", \"*.X.example\"")
        )
    );
    let (_, _, key, message) = reject(&with_tls(tls_listen, &dup));
    assert_eq!(key, "server.tls[1].server_names[1]");
    assert!(
        message.contains("already served by server.tls[0]"),
        "{message}"
    );
    let (_, _, key, _) = reject(&with_tls(
        tls_listen,
        &entry(&one.cert, &one.key, &names("\"a.*.example\"")),
    ));
    assert_eq!(key, "server.tls[0].server_names[0]");
    let (_, _, key, _) = reject(&with_tls(r#"{ addr = "127.0.0.1:1", tls = "yes" }"#, ""));
    assert_eq!(key, "server.listen[0].tls");
    let (_, _, key, _) = reject(&with_tls(r#"{ addr = "127.0.0.1:1", port = 2 }"#, ""));
    assert_eq!(key, "server.listen[0].port");

    // A good one loads; /config shows paths and names, never key material.
    let text = with_tls(
        &format!("\"127.0.0.1:8080\", {tls_listen}"),
        &format!(
            "{}{}",
            entry(&one.cert, &one.key, ""),
            entry(&two.cert, &two.key, &names("\"two.example\""))
        ),
    );
    let loaded = match config::parse(&text, "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(loaded.server.listen.iter().filter(|l| l.tls).count(), 1);
    let json = serde_json::to_string(&loaded).unwrap();
    assert!(json.contains(&one.key.path.display().to_string()), "{json}");
    assert!(json.contains("two.example"), "{json}");
    let key_pem = std::fs::read_to_string(&one.key.path).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(
        !json.contains(key_body) && !json.contains("PRIVATE"),
        "{json}"
    );
    assert!(loaded.summary().contains("(tls)"));
}
