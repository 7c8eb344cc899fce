//! TLS to upstreams end to end: the real binary proxying to a rustls upstream made for the test
//! (an rcgen CA and a leaf for `api.internal` and 127.0.0.1), with `upstreams.NAME.tls`. Every
//! scenario runs on the io_uring driver and on epoll. The config checks at the end need no
//! gateway.

#[path = "common/config_check.rs"]
mod config_check;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/pki.rs"]
mod pki;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use config_check::reject;
use gateway::{get_on, on_both_drivers, read_response, scrape, Gateway, TempFile, PATIENCE};
use pki::Pki;
use ringgate::config;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A TLS upstream: answers every GET with 200 and `ok:PATH`, keeps connections alive, and
/// counts TCP connections, completed handshakes and requests.
struct TlsUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TlsUpstream {
    fn spawn(pki: &Pki) -> TlsUpstream {
        let leaf = pki.leaf(&["api.internal", "127.0.0.1"]);
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der.clone()], leaf.private_key())
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = TlsUpstream {
            addr,
            connections: Arc::new(AtomicUsize::new(0)),
            handshakes: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let (c, h, r) = (
            Arc::clone(&up.connections),
            Arc::clone(&up.handshakes),
            Arc::clone(&up.requests),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, h, r) = (Arc::clone(&config), Arc::clone(&h), Arc::clone(&r));
                std::thread::spawn(move || serve(config, tcp, &h, &r));
            }
        });
        up
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    handshakes: &AtomicUsize,
    requests: &Mutex<Vec<String>>,
) {
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut reader = BufReader::new(tls);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let path = head.split(' ').nth(1).unwrap_or("?").to_string();
        requests.lock().unwrap().push(head);
        let body = format!("ok:{path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let tls = reader.get_mut();
        if tls.write_all(response.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
    }
}

/// The gateway's config: one upstream `secure` at `upstream` with `tls` as given.
fn config(driver: &str, upstream: SocketAddr, tls: &str) -> String {
    format!(
        r#"
[server]
listen = ["{{listen}}"]
workers = 1
pin = false
driver = "{driver}"

[admin]
listen = "127.0.0.1:0"

[upstreams.secure]
targets = ["{upstream}"]
tls = {tls}
read_timeout = "2s"

[[routes]]
path_prefix = "/"
upstream = "secure"
"#
    )
}

struct Running {
    gw: Gateway,
    admin: SocketAddr,
}

fn start(driver: &str, upstream: SocketAddr, tls: &str) -> Running {
    let mut gw = Gateway::start(&config(driver, upstream, tls));
    let admin = gw.admin_addr();
    Running { gw, admin }
}

/// A request to `up` through a gateway whose `tls` refuses its certificate: 502, the failure
/// logged with `reason` and counted, no request and no completed handshake at the upstream.
fn refused_handshake(driver: &str, up: &TlsUpstream, tls: &str, reason: &str) {
    let mut run = start(driver, up.addr, tls);
    let mut client = BufReader::new(run.gw.connect());
    let (status, _, _) = get_on(&mut client, "/x");
    assert_eq!(status, 502);
    let line = run.gw.wait_for_line("upstream TLS handshake failed");
    assert!(line.contains(reason), "{line}");
    assert!(up.requests().is_empty());
    assert_eq!(up.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(tls_errors(run.admin), 1.0);
}

/// `tls = { ca = ..., server_name = ... }` for `pki`'s bundle.
fn tls_with(pki: &Pki, server_name: Option<&str>) -> String {
    match server_name {
        Some(name) => format!(
            "{{ ca = \"{}\", server_name = \"{name}\" }}",
            pki.pem.path.display()
        ),
        None => format!("{{ ca = \"{}\" }}", pki.pem.path.display()),
    }
}

fn tls_errors(admin: SocketAddr) -> f64 {
    let name = "ringgate_upstream_errors_total{upstream=\"secure\",reason=\"upstream_tls\"}";
    scrape(admin).get(name).copied().unwrap_or(0.0)
}

on_both_drivers! {
    proxies_over_verified_tls_and_reuses_the_connection(driver) {
        let pki = Pki::new();
        let up = TlsUpstream::spawn(&pki);
        let run = start(driver, up.addr, &tls_with(&pki, Some("api.internal")));
        let mut client = BufReader::new(run.gw.connect());
        let (status, _, body) = get_on(&mut client, "/one");
        assert_eq!(status, 200);
        assert_eq!(body, b"ok:/one");
        let (status, _, body) = get_on(&mut client, "/two");
        assert_eq!(status, 200);
        assert_eq!(body, b"ok:/two");
        // A second client connection takes the pooled upstream connection too.
        let mut other = BufReader::new(run.gw.connect());
        let (status, _, body) = get_on(&mut other, "/three");
        assert_eq!((status, body.as_slice()), (200, &b"ok:/three"[..]));
        assert_eq!(up.requests().len(), 3);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one TLS connection upstream");
        assert_eq!(up.handshakes.load(Ordering::SeqCst), 1);
        assert_eq!(tls_errors(run.admin), 0.0);
    }

    verifies_the_target_ip_without_server_name(driver) {
        let pki = Pki::new();
        let up = TlsUpstream::spawn(&pki);
        let run = start(driver, up.addr, &tls_with(&pki, None));
        let mut client = BufReader::new(run.gw.connect());
        let (status, _, body) = get_on(&mut client, "/ip");
        assert_eq!((status, body.as_slice()), (200, &b"ok:/ip"[..]));
    }

    wrong_server_name_is_a_502_and_nothing_reaches_the_upstream(driver) {
        let pki = Pki::new();
        let up = TlsUpstream::spawn(&pki);
        refused_handshake(driver, &up, &tls_with(&pki, Some("other.internal")), "name_mismatch");
    }

    a_ca_that_did_not_sign_the_leaf_is_a_502(driver) {
        let up = TlsUpstream::spawn(&Pki::new());
        refused_handshake(driver, &up, &tls_with(&Pki::new(), Some("api.internal")), "unknown_issuer");
    }

    an_upgrade_to_a_tls_upstream_is_refused(driver) {
        let pki = Pki::new();
        let up = TlsUpstream::spawn(&pki);
        let run = start(driver, up.addr, &tls_with(&pki, Some("api.internal")));
        let mut client = BufReader::new(run.gw.connect());
        write!(
            client.get_mut(),
            "GET /ws HTTP/1.1\r\nHost: api.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .unwrap();
        let (status, _, _) = read_response(&mut client);
        assert_eq!(status, 502);
        assert!(up.requests().is_empty());
        assert_eq!(tls_errors(run.admin), 1.0);
    }
}

// ---- config checks: no gateway needed ----

fn upstream_with(lines: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[upstreams.secure]\ntargets = [\"127.0.0.1:9443\"]\n{lines}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"secure\"\n"
    )
}

#[test]
fn config_errors_name_the_file_line_column_and_key() {
    // Missing CA file.
    let (line, column, key, message) = reject(&upstream_with(
        "tls = { ca = \"/nonexistent/ca.pem\", server_name = \"api.internal\" }\n",
    ));
    assert_eq!(
        (line, column, key.as_str()),
        (6, 14, "upstreams.secure.tls.ca")
    );
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");

    // A file without certificates.
    let empty = TempFile::new("pem", b"not a certificate\n");
    let (line, column, key, message) = reject(&upstream_with(&format!(
        "tls = {{ ca = \"{}\" }}\n",
        empty.path.display()
    )));
    assert_eq!(
        (line, column, key.as_str()),
        (6, 14, "upstreams.secure.tls.ca")
    );
    assert!(message.contains("no certificate"), "{message}");

    // `tls = true`: no system roots here.
    let (line, column, key, message) = reject(&upstream_with("tls = true\n"));
    assert_eq!((line, column, key.as_str()), (6, 7, "upstreams.secure.tls"));
    assert!(message.contains("system"), "{message}");
    assert!(message.contains("ca"), "{message}");

    // A table without `ca`.
    let (line, column, key, message) =
        reject(&upstream_with("tls = { server_name = \"api.internal\" }\n"));
    assert_eq!(
        (line, column, key.as_str()),
        (6, 7, "upstreams.secure.tls.ca")
    );
    assert!(message.contains("required"), "{message}");

    // A name that is neither DNS nor IP.
    let pki = Pki::new();
    let (line, column, key, _) = reject(&upstream_with(&format!(
        "tls = {{ ca = \"{}\", server_name = \"not a name\" }}\n",
        pki.pem.path.display()
    )));
    assert_eq!(line, 6);
    assert!(column > 14, "{column}");
    assert_eq!(key, "upstreams.secure.tls.server_name");

    // Unknown keys are refused.
    let (line, _, _, message) = reject(&upstream_with(&format!(
        "tls = {{ ca = \"{}\", verify = false }}\n",
        pki.pem.path.display()
    )));
    assert_eq!(line, 6);
    assert!(message.contains("verify"), "{message}");

    // Active health checks stay plain HTTP: refused together with `tls`.
    let (line, _, key, message) = reject(&upstream_with(&format!(
        "tls = {{ ca = \"{}\" }}\nhealth = {{ path = \"/healthz\" }}\n",
        pki.pem.path.display()
    )));
    assert_eq!((line, key.as_str()), (7, "upstreams.secure.health"));
    assert!(message.contains("TLS"), "{message}");
}

#[test]
fn a_valid_upstream_tls_section_loads_and_prints_no_secrets() {
    let pki = Pki::new();
    let text = upstream_with(&format!(
        "tls = {{ ca = \"{}\", server_name = \"api.internal\" }}\n",
        pki.pem.path.display()
    ));
    let config = config::parse(&text, "t.toml").expect("valid");
    let tls = config.upstreams[0].tls.as_ref().expect("tls");
    assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
    let json = serde_json::to_string(&config.upstreams[0]).unwrap();
    assert!(json.contains("api.internal"), "{json}");
    assert!(!json.contains("BEGIN"), "{json}");
    // `tls = false` is plain.
    let plain = config::parse(&upstream_with("tls = false\n"), "t.toml").expect("valid");
    assert!(plain.upstreams[0].tls.is_none());
    // The header-table form works as well.
    let text = upstream_with(&format!(
        "\n[upstreams.secure.tls]\nca = \"{}\"\n",
        pki.pem.path.display()
    ));
    let config = config::parse(&text, "t.toml").expect("valid");
    assert!(config.upstreams[0].tls.is_some());
}
