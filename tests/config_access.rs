//! The access keys of the config contract (`server.ip_allow` / `ip_deny`, and per route `ip`,
//! `cors`, `auth`, `request_headers`, `response_headers`): the shipped example, key files read
//! at load and re-read on reload, secrets kept out of `/config`, and rejections that name the
//! line, column and key path (with the key file and its line where that is at fault).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "common/config_check.rs"]
mod config_check;

use config_check::{assert_rejects, parse};
use ringgate::access::{apikey, Auth, Verdict};
use ringgate::config::{self, Config, ConfigError};

const HEAD: &str =
    "[server]\nlisten = [\"127.0.0.1:8080\"]\n[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n";

fn data(file: &str) -> String {
    format!("{}/tests/data/jwt/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// 1-based line and column of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> (usize, usize) {
    let Some(offset) = text.find(needle) else {
        panic!("{needle:?} not in\n{text}");
    };
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// Asserts that `text` is refused at the first `needle`, for `key`, with `message_part`.
fn assert_rejects_at(text: &str, needle: &str, key: &str, message_part: &str) {
    let (line, column) = at(text, needle);
    assert_rejects(text, line, column, key, message_part);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ringgate-config-access-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{}: {e}", dir.display());
        }
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            panic!("{}: {e}", path.display());
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn shipped_example_exercises_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = match config::load(&root.join("auth.toml")) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    assert!(config.server.ip.permits(ip("203.0.113.5")));
    assert!(!config.server.ip.permits(ip("192.0.2.1")));
    assert!(!config.server.ip.permits(ip("::ffff:192.0.2.1")));
    assert!(!config.server.ip.permits(ip("2001:db8:dead::1")));

    assert_eq!(config.route_policies.len(), config.routes.len());
    let internal = &config.route_policies[0];
    assert!(internal.ip.permits(ip("10.1.2.3")));
    assert!(!internal.ip.permits(ip("10.66.0.1")));
    assert!(!internal.ip.permits(ip("203.0.113.5")));
    match &internal.auth {
        Some(Auth::ApiKeys(keys)) => {
            // Resolved against the config file's directory, not the working directory.
            assert_eq!(keys.file, root.join("keys/demo.keys"));
            assert_eq!(keys.header, "X-API-Key");
            assert_eq!(keys.forward_as.as_deref(), Some("X-Api-Key-Name"));
            assert_eq!(keys.keys.lookup(b"demo-key-billing"), Some("billing-svc"));
            assert_eq!(keys.keys.lookup(b"demo-key-reports"), Some("reports"));
        }
        other => panic!("{other:?}"),
    }
    assert!(internal.drops_request_header(b"x-debug"));
    assert!(internal.drops_request_header(b"x-api-key"));

    let v1 = &config.route_policies[1];
    let cors = v1.cors.as_ref().map(|c| c.settings().clone());
    assert_eq!(
        cors.as_ref().map(|c| c.max_age),
        Some(Some(Duration::from_secs(600)))
    );
    assert_eq!(cors.as_ref().map(|c| c.credentials), Some(true));
    assert!(v1
        .cors
        .as_ref()
        .is_some_and(|c| c.allows_origin(b"https://shop.example.com")));
    match &v1.auth {
        Some(Auth::Jwt(policy)) => {
            let s = policy.settings();
            assert_eq!(s.leeway, Duration::from_secs(30));
            assert_eq!(s.issuer.as_deref(), Some("https://id.example.com"));
            assert_eq!(s.required_scopes, ["api:read"]);
            assert_eq!(
                s.claims_to_headers,
                [
                    ("sub".to_string(), "X-User-Id".to_string()),
                    ("email".to_string(), "X-User-Email".to_string())
                ]
            );
            assert_eq!(s.key.path(), &root.join("keys/jwt-rs256.pub.pem"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!v1.response_headers.is_empty());
    assert!(matches!(config.route_policies[2].auth, Some(Auth::Jwt(_))));
    assert!(matches!(config.route_policies[3].auth, Some(Auth::Jwt(_))));
    assert!(config.route_policies[4].cors.is_some());

    let summary = config.summary();
    assert!(
        summary.contains("access: ip filter, api keys, request headers"),
        "{summary}"
    );
    assert!(
        summary.contains("access: cors, jwt, response headers"),
        "{summary}"
    );
}

#[test]
fn config_json_keeps_secrets_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = match config::load(&root.join("auth.toml")) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    let json = match serde_json::to_string(&config) {
        Ok(json) => json,
        Err(e) => panic!("{e}"),
    };
    let secret = std::fs::read_to_string(root.join("keys/demo-hs256.secret")).unwrap_or_default();
    assert!(!json.contains(secret.trim()), "HS secret in /config");
    assert!(
        !json.contains(&apikey::hash_key("demo-key-billing")),
        "key hash in /config"
    );
    assert!(!json.contains("BEGIN PUBLIC KEY"));
    // What it does show: where the keys live and how many there are.
    assert!(json.contains("demo.keys"), "{json}");
    assert!(json.contains(r#""keys":2"#), "{json}");
    assert!(json.contains("demo-hs256.secret"), "{json}");
    assert!(
        json.contains(
            r#""ip":{"allow":["0.0.0.0/0","::/0"],"deny":["192.0.2.0/24","2001:db8:dead::/48"]}"#
        ),
        "{json}"
    );
}

#[test]
fn defaults() {
    let dir = Scratch::new("defaults");
    let keys = dir.write("k.keys", &format!("svc:{}\n", apikey::hash_key("k")));
    let text = format!(
        "{HEAD}[[routes]]\npath_prefix = \"/a/\"\nupstream = \"api\"\nauth = {{ api_keys = {keys:?} }}\n\
         [[routes]]\npath_prefix = \"/b/\"\nupstream = \"api\"\ncors = {{ origins = [\"https://a.test\"] }}\n\
         [routes.auth.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = {:?}\n\
         [[routes]]\npath_prefix = \"/c/\"\nupstream = \"api\"\n",
        data("rsa-public.pem")
    );
    let config = parse(&text);
    assert!(config.server.ip.is_open());
    match &config.route_policies[0].auth {
        Some(Auth::ApiKeys(a)) => {
            assert_eq!(a.header, "X-API-Key");
            assert_eq!(a.forward_as, None);
        }
        other => panic!("{other:?}"),
    }
    let b = &config.route_policies[1];
    match &b.auth {
        Some(Auth::Jwt(p)) => {
            let s = p.settings();
            assert_eq!(s.leeway, Duration::from_secs(60));
            assert_eq!((&s.issuer, &s.audience), (&None, &None));
            assert!(s.required_scopes.is_empty() && s.claims_to_headers.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let cors = b.cors.as_ref().map(|c| c.settings().clone());
    assert_eq!(
        cors.as_ref().map(|c| (c.max_age, c.credentials)),
        Some((None, false))
    );
    assert!(config.route_policies[2].is_empty());
}

#[test]
fn key_files_are_reread_on_reload() {
    let dir = Scratch::new("reload");
    dir.write(
        "keys.txt",
        &format!(
            "alice:{}\nbob:{}\n",
            apikey::hash_key("alice-key"),
            apikey::hash_key("bob-key")
        ),
    );
    // A relative path: resolved against the config file's directory.
    let path = dir.write(
        "gateway.toml",
        &format!(
            "{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n\
             auth = {{ api_keys = \"keys.txt\", forward_as = \"X-Caller\" }}\n"
        ),
    );
    let check = |config: &Config, key: &[u8]| match &config.route_policies[0].auth {
        Some(auth) => {
            let mut cache = ringgate::access::JwtCache::new(0);
            let mut forward = Vec::new();
            let verdict = auth.check(
                |name| name.eq_ignore_ascii_case(b"x-api-key").then_some(key),
                0,
                &mut cache,
                &mut forward,
            );
            (verdict == Verdict::Allow).then(|| String::from_utf8_lossy(&forward).into_owned())
        }
        None => panic!("no auth"),
    };
    let first = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        check(&first, b"bob-key").as_deref(),
        Some("X-Caller: bob\r\n")
    );

    dir.write(
        "keys.txt",
        &format!("alice:{}\n", apikey::hash_key("alice-key")),
    );
    let second = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        check(&second, b"bob-key"),
        None,
        "a removed key is refused after reload"
    );
    assert_eq!(
        check(&second, b"alice-key").as_deref(),
        Some("X-Caller: alice\r\n")
    );
    assert_ne!(first, second);

    // A broken key file fails the reload, naming the config key and the key file's line.
    dir.write("keys.txt", "alice:not-a-hash\n");
    match config::load(&path) {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => {
            assert_eq!((line, key.as_str()), (8, "routes[0].auth.api_keys"));
            assert!(message.contains("keys.txt:1: "), "{message}");
            assert!(message.contains("64 hex digits"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ip_lists() {
    let text =
        "[server]\nlisten = [\"127.0.0.1:8080\"]\nip_allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n";
    assert_rejects_at(
        text,
        "\"10.0.0.0/33\"",
        "server.ip_allow[1]",
        "prefix length",
    );
    let text = "[server]\nlisten = [\"127.0.0.1:8080\"]\nip_deny = [\"10.1.0.0/8\"]\n";
    assert_rejects_at(text, "\"10.1.0.0/8\"", "server.ip_deny[0]", "10.0.0.0/8");
    let route = |ip: &str| {
        format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nip = {ip}\n")
    };
    let text = route(r#"{ deny = ["::1", "fe80::/10", "nope"] }"#);
    assert_rejects_at(
        &text,
        "\"nope\"",
        "routes[0].ip.deny[2]",
        "not an IP address",
    );
    let text = route(r#"{ allowed = ["::1"] }"#);
    assert_rejects_at(&text, "allowed", "routes[0].ip.allowed", "unknown field");
    let config = parse(&route(r#"{ allow = ["2001:db8::/32"] }"#));
    assert!(config.route_policies[0].ip.permits(ip("2001:db8::1")));
    assert!(!config.route_policies[0].ip.permits(ip("10.0.0.1")));
}

#[test]
fn cors_settings() {
    let route = |cors: &str| {
        format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\ncors = {cors}\n")
    };
    let text = route(r#"{ origins = ["*"], credentials = true }"#);
    assert_rejects_at(
        &text,
        "true",
        "routes[0].cors.credentials",
        "origins = [\"*\"]",
    );
    let text = route(r#"{ origins = ["https://ok.test", "https://*.com"] }"#);
    assert_rejects_at(
        &text,
        "\"https://*.com\"",
        "routes[0].cors.origins[1]",
        "two labels",
    );
    let text = route(r#"{ origins = [] }"#);
    assert_rejects_at(&text, "[]", "routes[0].cors.origins", "at least one origin");
    let text = route(r#"{ origins = ["null"] }"#);
    assert_rejects_at(&text, "\"null\"", "routes[0].cors.origins[0]", "sandboxed");
    let text = route(r#"{ origins = ["https://a.test"], methods = ["GET", "B AD"] }"#);
    assert_rejects_at(
        &text,
        "\"B AD\"",
        "routes[0].cors.methods[1]",
        "not a method",
    );
    let text = route(r#"{ origins = ["https://a.test"], expose_headers = ["x:y"] }"#);
    assert_rejects_at(
        &text,
        "\"x:y\"",
        "routes[0].cors.expose_headers[0]",
        "not a header name",
    );
    let text = route(r#"{ origins = ["https://a.test"], max_age = 600 }"#);
    assert_rejects_at(&text, "600", "routes[0].cors.max_age", "needs a unit");
    let text = route(r#"{ methods = ["GET"] }"#);
    assert_rejects_at(
        &text,
        "{ methods",
        "routes[0].cors",
        "missing field `origins`",
    );
}

#[test]
fn api_key_settings() {
    let dir = Scratch::new("apikeys");
    let keys = dir.write("k.keys", &format!("a:{}\n", apikey::hash_key("x")));
    let route = |auth: &str| {
        format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = {auth}\n")
    };

    let text = route(r#"{ api_keys = "/nonexistent/ringgate/k.keys" }"#);
    assert_rejects_at(
        &text,
        "\"/nonexistent",
        "routes[0].auth.api_keys",
        "cannot read /nonexistent/ringgate/k.keys",
    );
    let bad = dir.write("bad.keys", "# header\n\nbob\n");
    let text = route(&format!("{{ api_keys = {bad:?} }}"));
    assert_rejects_at(
        &text,
        &format!("{bad:?}"),
        "routes[0].auth.api_keys",
        "bad.keys:3: expected `name:sha256hex`",
    );

    let text = route(&format!("{{ api_keys = {keys:?}, header = \"X Key\" }}"));
    assert_rejects_at(
        &text,
        "\"X Key\"",
        "routes[0].auth.header",
        "not a header name",
    );
    let text = route(&format!(
        "{{ api_keys = {keys:?}, forward_as = \"x-api-key\" }}"
    ));
    assert_rejects_at(
        &text,
        "\"x-api-key\"",
        "routes[0].auth.forward_as",
        "must differ",
    );
    let text = route(&format!("{{ api_keys = {keys:?}, forward_as = \"Host\" }}"));
    assert_rejects_at(
        &text,
        "\"Host\"",
        "routes[0].auth.forward_as",
        "managed by the gateway",
    );
    let text = route(&format!(
        "{{ api_keys = {keys:?}, jwt = {{ algorithms = [\"HS256\"], secret_file = \"s\" }} }}"
    ));
    assert_rejects_at(
        &text,
        &format!("{keys:?}"),
        "routes[0].auth.api_keys",
        "cannot be combined with `jwt`",
    );
    let text = format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = {{}}\n");
    assert_rejects_at(&text, "[[routes]]", "routes[0].auth", "needs `api_keys");
    let text = route(&format!("{{ api_keys = {keys:?}, token = \"x\" }}"));
    assert_rejects_at(&text, "token", "routes[0].auth.token", "unknown field");
}

#[test]
fn jwt_settings() {
    let pem = data("rsa-public.pem");
    let jwt = |body: &str| {
        format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n[routes.auth.jwt]\n{body}\n")
    };
    let text = jwt(&format!(
        "algorithms = [\"RS256\", \"RS257\"]\npublic_key_file = {pem:?}"
    ));
    assert_rejects_at(
        &text,
        "\"RS257\"",
        "routes[0].auth.jwt.algorithms[1]",
        "not a JWS algorithm",
    );
    let text = jwt(&format!(
        "algorithms = [\"none\"]\npublic_key_file = {pem:?}"
    ));
    assert_rejects_at(
        &text,
        "\"none\"",
        "routes[0].auth.jwt.algorithms[0]",
        "never accepted",
    );
    let text = jwt("algorithms = [\"RS256\"]");
    assert_rejects_at(&text, "[\"RS256\"]", "routes[0].auth.jwt", "needs a key");
    let text = jwt(&format!(
        "algorithms = [\"RS256\"]\npublic_key_file = {pem:?}\njwks_file = \"j\""
    ));
    assert_rejects_at(
        &text,
        "\"j\"",
        "routes[0].auth.jwt.jwks_file",
        "only one of",
    );
    // HS/RS confusion is refused at load: HS256 with a public key, an RSA key as a secret.
    let text = jwt(&format!(
        "algorithms = [\"HS256\"]\npublic_key_file = {pem:?}"
    ));
    assert_rejects_at(
        &text,
        "[\"HS256\"]",
        "routes[0].auth.jwt.algorithms",
        "secret_file",
    );
    let text = jwt(&format!("algorithms = [\"HS256\"]\nsecret_file = {pem:?}"));
    assert_rejects_at(
        &text,
        &format!("{pem:?}"),
        "routes[0].auth.jwt.secret_file",
        "holds a PEM key",
    );
    let private = data("rsa-private.pem");
    let text = jwt(&format!(
        "algorithms = [\"RS256\"]\npublic_key_file = {private:?}"
    ));
    assert_rejects_at(
        &text,
        &format!("{private:?}"),
        "routes[0].auth.jwt.public_key_file",
        "private key",
    );
    let text = jwt(&format!(
        "algorithms = [\"ES256\"]\npublic_key_file = {pem:?}"
    ));
    assert_rejects_at(
        &text,
        &format!("{pem:?}"),
        "routes[0].auth.jwt.public_key_file",
        "rsa-public.pem: not a PEM EC public key",
    );
    let text = jwt("algorithms = [\"RS256\"]\njwks_file = \"/nonexistent/jwks.json\"");
    assert_rejects_at(
        &text,
        "\"/nonexistent",
        "routes[0].auth.jwt.jwks_file",
        "cannot read /nonexistent/jwks.json",
    );

    let dir = Scratch::new("jwt");
    let short = dir.write("short.secret", "too-short\n");
    let text = jwt(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = {short:?}"
    ));
    assert_rejects_at(
        &text,
        &format!("{short:?}"),
        "routes[0].auth.jwt.secret_file",
        "at least 32",
    );

    let ok = format!("algorithms = [\"RS256\"]\npublic_key_file = {pem:?}");
    let text = jwt(&format!(
        "{ok}\nclaims_to_headers = {{ sub = \"X-User\", email = \"Host\" }}"
    ));
    assert_rejects_at(
        &text,
        "\"Host\"",
        "routes[0].auth.jwt.claims_to_headers.email",
        "managed by the gateway",
    );
    let text = jwt(&format!(
        "{ok}\nrequired_scopes = [\"read\", \"two words\"]"
    ));
    assert_rejects_at(
        &text,
        "\"two words\"",
        "routes[0].auth.jwt.required_scopes[1]",
        "not a scope",
    );
    let text = jwt(&format!("{ok}\nleeway = 30"));
    assert_rejects_at(&text, "30", "routes[0].auth.jwt.leeway", "needs a unit");
    let text = jwt(&format!("{ok}\naudience = \"\""));
    assert_rejects_at(
        &text,
        "\"\"",
        "routes[0].auth.jwt.audience",
        "must not be empty",
    );
    let text = jwt(&format!("{ok}\nheader = \"X-Token\""));
    assert_rejects_at(
        &text,
        "header",
        "routes[0].auth.jwt.header",
        "unknown field",
    );
    let text = format!(
        "{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = {{ header = \"X-A\", jwt = {{ algorithms = [\"RS256\"], public_key_file = {pem:?} }} }}\n"
    );
    assert_rejects_at(
        &text,
        "\"X-A\"",
        "routes[0].auth.header",
        "only applies with `api_keys`",
    );
}

#[test]
fn header_edits() {
    let route = |edits: &str| {
        format!("{HEAD}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n{edits}\n")
    };
    let text = route(
        r#"response_headers = { set = { "X-Frame-Options" = "DENY", "Content-Length" = "5" } }"#,
    );
    assert_rejects_at(
        &text,
        "\"Content-Length\"",
        "routes[0].response_headers.set.Content-Length",
        "managed by the gateway",
    );
    let text = route(r#"request_headers = { set = { "X-A" = "one\r\nX-B: two" } }"#);
    assert_rejects_at(
        &text,
        "\"one",
        "routes[0].request_headers.set.X-A",
        "control characters",
    );
    let text = route(r#"request_headers = { remove = ["X-A", "X-Forwarded-For"] }"#);
    assert_rejects_at(
        &text,
        "\"X-Forwarded-For\"",
        "routes[0].request_headers.remove[1]",
        "managed by the gateway",
    );
    let text = route(r#"request_headers = { set = { "X A" = "v" } }"#);
    assert_rejects_at(
        &text,
        "\"X A\"",
        "routes[0].request_headers.set.\"X A\"",
        "not a header name",
    );
    let text = route(r#"request_headers = { sets = {} }"#);
    assert_rejects_at(
        &text,
        "sets",
        "routes[0].request_headers.sets",
        "unknown field",
    );
    let text = format!(
        "{HEAD}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200 }}\nrequest_headers = {{ remove = [\"X-A\"] }}\n"
    );
    assert_rejects_at(
        &text,
        "[[routes]]",
        "routes[0].request_headers",
        "only applies to routes with an `upstream`",
    );
    // Response edits apply to direct responses too.
    let text = format!(
        "{HEAD}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200 }}\nresponse_headers = {{ set = {{ \"Cache-Control\" = \"no-store\" }} }}\n"
    );
    let config = parse(&text);
    let mut out = Vec::new();
    config.route_policies[0]
        .response_headers
        .write_set(&mut out);
    assert_eq!(out, b"Cache-Control: no-store\r\n");
}
