//! Access control through the running gateway (issue #8): address filters, CORS preflights
//! answered by the gateway, API keys (and a key removed on reload), JWTs (valid, expired,
//! forged, wrong audience, `alg: none`, HS/RS confusion) and header edits. Every refusal is
//! checked from both ends: the client's status and headers, and what the upstream saw (for a
//! refusal: nothing).

#[path = "common/gateway.rs"]
mod gateway;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use gateway::{exchange, Gateway, TempFile, Upstream};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn data(file: &str) -> String {
    format!("{}/tests/data/jwt/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upstream answering `ok` with headers a route may edit.
fn upstream() -> Upstream {
    Upstream::spawn(|_, stream: &mut TcpStream| {
        let body = "ok";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Powered-By: php\r\nX-Backend: b1\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).is_ok() && stream.write_all(body.as_bytes()).is_ok()
    })
}

/// The gateway with `workers` workers and one upstream, `api`, in front of `up`, and `routes`.
fn start(up: &Upstream, workers: usize, routes: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = [\"{{listen}}\"]\nworkers = {workers}\n\n[upstreams.api]\ntargets = [\"{}\"]\n\n{routes}",
        up.addr
    ))
}

fn get(gw: &Gateway, path: &str, extra: &str) -> (u16, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: api\r\n{extra}\r\n");
    let (status, head, _) = exchange(gw, raw.as_bytes());
    (status, head)
}

#[test]
fn ip_filters_refuse_before_the_upstream_sees_anything() {
    let up = upstream();
    let workers = 1;
    let routes = r#"
[[routes]]
path_prefix = "/denied/"
upstream = "api"
ip = { deny = ["127.0.0.0/8"] }

[[routes]]
path_prefix = "/allowed/"
upstream = "api"
ip = { allow = ["127.0.0.1/32", "::1"] }

[[routes]]
path_prefix = "/elsewhere/"
upstream = "api"
ip = { allow = ["10.0.0.0/8"] }
"#;
    let gw = start(&up, workers, routes);
    assert_eq!(get(&gw, "/denied/x", "").0, 403);
    assert_eq!(get(&gw, "/elsewhere/x", "").0, 403);
    assert_eq!(get(&gw, "/allowed/x", "").0, 200);
    let seen: Vec<String> = up.requests().iter().map(|r| r.head.clone()).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("GET /allowed/x "));

    // The global list refuses on every route, even one without rules of its own.
    let up2 = upstream();
    let global = format!(
        "[server]\nlisten = [\"{{listen}}\"]\nip_deny = [\"127.0.0.1\"]\n[upstreams.api]\ntargets = [\"{}\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        up2.addr
    );
    let gw2 = Gateway::start(&global);
    assert_eq!(get(&gw2, "/anything", "").0, 403);
    assert!(up2.requests().is_empty());
}

#[test]
fn cors_preflights_are_answered_by_the_gateway() {
    let up = upstream();
    let workers = 1;
    let routes = r#"
[[routes]]
path_prefix = "/v1/"
methods = ["GET", "POST"]
upstream = "api"
cors = { origins = ["https://app.example.com", "https://*.example.org"], methods = ["GET", "POST"], headers = ["Authorization"], expose_headers = ["X-Backend"], max_age = "10m" }

[[routes]]
path_prefix = "/v2/"
upstream = "api"
cors = { origins = ["https://app.example.com"], methods = ["GET"] }
"#;
    let gw = start(&up, workers, routes);
    let preflight = |origin: &str, method: &str| {
        let raw = format!(
            "OPTIONS /v1/items HTTP/1.1\r\nHost: api\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        );
        let (status, head, body) = exchange(&gw, raw.as_bytes());
        assert!(status != 204 || body.is_empty(), "{head}");
        (status, head)
    };
    // Allowed: 204 with the grant, though the route itself only takes GET and POST.
    let (status, head) = preflight("https://app.example.com", "POST");
    assert_eq!(status, 204, "{head}");
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let methods = header(&head, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{head}");
    assert_eq!(header(&head, "access-control-max-age"), Some("600"));
    assert!(header(&head, "content-length").is_none(), "{head}");
    // A wildcard subdomain matches; a look-alike does not; a method outside the list neither.
    assert_eq!(preflight("https://a.b.example.org", "GET").0, 204);
    assert_eq!(preflight("https://evil-example.org", "GET").0, 403);
    assert_eq!(preflight("https://example.org.evil.com", "GET").0, 403);
    // DELETE: no route takes it, so there is nothing to grant.
    assert_eq!(preflight("https://app.example.com", "DELETE").0, 404);
    // A route that takes any method, with a CORS policy that grants only GET.
    let raw = b"OPTIONS /v2/x HTTP/1.1\r\nHost: api\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: PUT\r\n\r\n";
    assert_eq!(exchange(&gw, raw).0, 403);
    assert!(
        up.requests().is_empty(),
        "no preflight reaches the upstream"
    );

    // The actual request goes through, with the grant on its response.
    let (status, head) = get(&gw, "/v1/items", "Origin: https://app.example.com\r\n");
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let exposed = header(&head, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.eq_ignore_ascii_case("x-backend"), "{head}");
    assert!(head.to_ascii_lowercase().contains("vary: origin"), "{head}");
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn api_keys_pass_refuse_and_follow_the_key_file_on_reload() {
    let up = upstream();
    let keys = TempFile::new(
        "keys",
        format!(
            "# test keys\nbilling:{}\nreports:{}\n",
            ringgate::access::hash_key("key-billing"),
            ringgate::access::hash_key("key-reports")
        )
        .as_bytes(),
    );
    let workers = 2;
    let routes = format!(
        r#"
[[routes]]
path_prefix = "/"
upstream = "api"
auth = {{ api_keys = "{keys}", header = "X-API-Key", forward_as = "X-Api-Key-Name" }}
"#,
        keys = keys.path.display()
    );
    let mut gw = start(&up, workers, &routes);
    let (status, _) = get(
        &gw,
        "/a",
        "X-API-Key: key-billing\r\nX-Api-Key-Name: forged\r\n",
    );
    assert_eq!(status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key-name"), Some("billing"));
    assert!(
        seen[0].header("x-api-key").is_none(),
        "the key is not forwarded"
    );
    assert_eq!(
        seen[0].head.matches("X-Api-Key-Name").count()
            + seen[0].head.matches("x-api-key-name").count(),
        1,
        "the client's forged name is dropped: {}",
        seen[0].head
    );

    let (status, head) = get(&gw, "/b", "X-API-Key: wrong\r\n");
    assert_eq!(status, 401);
    assert!(header(&head, "www-authenticate").is_some(), "{head}");
    assert_eq!(get(&gw, "/c", "").0, 401);
    assert_eq!(
        up.requests().len(),
        1,
        "refused requests never reach the upstream"
    );

    // Remove "reports" from the file; after the reload its key is refused.
    assert_eq!(get(&gw, "/d", "X-API-Key: key-reports\r\n").0, 200);
    std::fs::write(
        &keys.path,
        format!("billing:{}\n", ringgate::access::hash_key("key-billing")),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_nth_line("reloaded", 1);
    assert_eq!(get(&gw, "/e", "X-API-Key: key-reports\r\n").0, 401);
    assert_eq!(get(&gw, "/f", "X-API-Key: key-billing\r\n").0, 200);
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn hash_key_prints_what_the_key_file_holds() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"key-billing\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        ringgate::access::hash_key("key-billing")
    );
}

/// A minimal base64url (no padding), to build tokens jsonwebtoken refuses to make.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn jwts_are_verified_and_their_claims_forwarded() {
    let up = upstream();
    let secret = TempFile::new("secret", b"an-hs256-secret-of-at-least-32-bytes!!");
    let workers = 1;
    let routes = format!(
        r#"
[[routes]]
path_prefix = "/rs/"
upstream = "api"

[routes.auth.jwt]
algorithms = ["RS256"]
public_key_file = "{public}"
issuer = "https://id.example.com"
audience = "api"
leeway = "5s"
required_scopes = ["read"]
claims_to_headers = {{ sub = "X-User-Id" }}

[[routes]]
path_prefix = "/hs/"
upstream = "api"
auth = {{ jwt = {{ algorithms = ["HS256"], secret_file = "{secret}" }} }}
"#,
        public = data("rsa-public.pem"),
        secret = secret.path.display()
    );
    let gw = start(&up, workers, &routes);
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(data("rsa-private.pem")).unwrap()).unwrap();
    let rsa2 =
        EncodingKey::from_rsa_pem(&std::fs::read(data("rsa2-private.pem")).unwrap()).unwrap();
    let claims = |exp: u64, aud: &str, scope: &str| {
        serde_json::json!({
            "sub": "user-7", "iss": "https://id.example.com", "aud": aud,
            "exp": exp, "scope": scope,
        })
    };
    let rs256 = |key: &EncodingKey, c: &serde_json::Value| {
        encode(&Header::new(Algorithm::RS256), c, key).unwrap()
    };
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let later = now() + 600;

    // Valid: passes, the claim arrives as a header (a forged one from the client does not).
    let good = rs256(&rsa, &claims(later, "api", "read write"));
    let (status, _) = get(&gw, "/rs/a", &(bearer(&good) + "X-User-Id: admin\r\n"));
    assert_eq!(status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-user-id"), Some("user-7"));
    assert_eq!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .matches("x-user-id")
            .count(),
        1
    );
    // The same token again (from the worker's cache) still passes.
    assert_eq!(get(&gw, "/rs/a2", &bearer(&good)).0, 200);

    let refused = |token: &str, why: &str| {
        let (status, head) = get(&gw, "/rs/x", &bearer(token));
        assert_eq!(status, 401, "{why}: {head}");
        let challenge = header(&head, "www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{why}: {head}");
    };
    refused(&rs256(&rsa, &claims(now() - 60, "api", "read")), "expired");
    refused(
        &rs256(&rsa2, &claims(later, "api", "read")),
        "wrong signature",
    );
    refused(&rs256(&rsa, &claims(later, "other", "read")), "wrong aud");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(later, "api", "read").to_string().as_bytes())
    );
    refused(&none, "alg none");
    // HS/RS confusion: HS256 signed with the RSA public key as the secret.
    let public_pem = std::fs::read(data("rsa-public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(later, "api", "read"),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    refused(&confused, "HS256 with the RSA public key");
    assert_eq!(get(&gw, "/rs/x", "").0, 401, "missing token");
    // A valid token without the scope: 403.
    let (status, head) = get(
        &gw,
        "/rs/x",
        &bearer(&rs256(&rsa, &claims(later, "api", "write"))),
    );
    assert_eq!(status, 403, "{head}");

    // The HS256 route takes its own tokens and refuses an RS256 one.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "exp": later }),
        &EncodingKey::from_secret(b"an-hs256-secret-of-at-least-32-bytes!!"),
    )
    .unwrap();
    assert_eq!(get(&gw, "/hs/x", &bearer(&hs)).0, 200);
    assert_eq!(get(&gw, "/hs/y", &bearer(&good)).0, 401);

    assert_eq!(
        up.requests().len(),
        3,
        "only the valid requests reached the upstream"
    );
}

#[test]
fn header_edits_apply_both_ways() {
    let up = upstream();
    let workers = 1;
    let routes = r#"
[[routes]]
path_prefix = "/"
upstream = "api"
request_headers = { set = { "X-Gateway" = "rg", "X-Tenant" = "t1" }, remove = ["X-Debug"] }
response_headers = { set = { "Strict-Transport-Security" = "max-age=600" }, remove = ["X-Powered-By"] }
"#;
    let gw = start(&up, workers, routes);
    let (status, head) = get(
        &gw,
        "/",
        "X-Debug: 1\r\nX-Tenant: forged\r\nX-Keep: yes\r\n",
    );
    assert_eq!(status, 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.header("x-gateway"), Some("rg"));
    assert_eq!(seen.header("x-tenant"), Some("t1"));
    assert_eq!(
        seen.head.to_ascii_lowercase().matches("x-tenant").count(),
        1
    );
    assert!(seen.header("x-debug").is_none());
    assert_eq!(seen.header("x-keep"), Some("yes"));
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=600")
    );
    assert!(header(&head, "x-powered-by").is_none(), "{head}");
    assert_eq!(header(&head, "x-backend"), Some("b1"));
}
