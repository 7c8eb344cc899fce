//! The config contract: every shipped file parses, defaults are what the docs say, and every
//! rejection names the right line, column and key path.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

#[path = "common/config_check.rs"]
mod config_check;

use config_check::{assert_rejects, parse, reject};
use ringgate::config::{
    self, Action, Balance, Builtin, ConfigError, Driver, HostMatch, Listen, UpstreamKind, Workers,
};
use ringgate::http::Limits;

const SERVER: &str = "[server]\nlisten = [\"127.0.0.1:8080\"]\n";

/// A plain-HTTP `server.listen` item.
fn plain(s: &str) -> Listen {
    Listen {
        addr: addr(s),
        tls: false,
    }
}

fn addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn every_shipped_config_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for dir in [root.clone(), root.join("examples")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => panic!("{}: {e}", dir.display()),
            };
            if path.extension().is_some_and(|ext| ext == "toml") {
                if let Err(e) = config::load(&path) {
                    panic!("{e}");
                }
                seen += 1;
            }
        }
    }
    // ringgate.toml, examples/minimal.toml, examples/api-gateway.toml at least.
    assert!(seen >= 3, "only {seen} config files found");
}

#[test]
fn embedded_default() {
    let config = match config::parse(config::EMBEDDED, config::EMBEDDED_ORIGIN) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    let server = &config.server;
    assert_eq!(server.listen, [plain("127.0.0.1:8080")]);
    assert_eq!(server.workers, Workers::Auto);
    assert!(server.pin);
    assert_eq!(server.driver, Driver::Auto);
    assert_eq!(server.drain_timeout, Duration::from_secs(30));
    assert_eq!(
        config.admin.as_ref().map(|a| a.listen),
        Some(addr("127.0.0.1:9901"))
    );
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].name, "echo");
    assert_eq!(
        config.upstreams[0].kind,
        UpstreamKind::Builtin(Builtin::Echo)
    );
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].path_prefix, "/echo/");
    assert!(matches!(
        config.routes[0].action,
        Action::Proxy {
            upstream: 0,
            strip_prefix: false,
            host_rewrite: None
        }
    ));
    assert_eq!(config.routes[1].path_prefix, "/");
    match &config.routes[1].action {
        Action::Respond {
            status,
            body,
            headers,
        } => {
            assert_eq!(*status, 200);
            assert!(body.starts_with("ringgate is running.\n"));
            assert!(headers.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let summary = config.summary();
    for part in [
        "127.0.0.1:8080",
        "auto",
        "/echo/",
        "upstream echo",
        "respond 200",
        "builtin echo",
    ] {
        assert!(summary.contains(part), "summary lacks {part:?}:\n{summary}");
    }
}

#[test]
fn defaults() {
    let config = parse(&format!(
        "{SERVER}[upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
    ));
    let server = &config.server;
    assert_eq!(server.workers, Workers::Auto);
    assert!(server.pin);
    assert_eq!(server.driver, Driver::Auto);
    assert_eq!(server.drain_timeout, Duration::from_secs(30));
    assert_eq!(server.max_connections, 16_384);
    assert_eq!(server.header_timeout, Duration::from_secs(10));
    assert_eq!(server.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(server.max_body, 1 << 30);
    assert_eq!(server.limits, Limits::DEFAULT);
    assert_eq!(config.admin, None);
    let api = &config.upstreams[0];
    assert_eq!(
        api.kind,
        UpstreamKind::Targets(vec![addr("127.0.0.1:9001")])
    );
    assert_eq!(api.balance, Balance::RoundRobin);
    assert_eq!(api.connect_timeout, Duration::from_secs(1));
    assert_eq!(api.read_timeout, Duration::from_secs(30));
    assert_eq!(api.idle_timeout, Duration::from_secs(60));
    assert_eq!(api.max_idle, 64);
    assert_eq!(api.max_requests, 10_000);
    assert_eq!(config.routes[0].host, HostMatch::Any);
    assert_eq!(config.routes[0].methods, None);
}

#[test]
fn every_key_is_read() {
    let config = parse(
        r#"
[server]
listen = ["127.0.0.1:8080", "[::1]:8081"]
workers = 3
pin = false
driver = "io_uring"
drain_timeout = "5s"
max_connections = 100
header_timeout = "2s"
keepalive_timeout = "5m"
max_body = "16MiB"
max_request_line = "4KiB"
max_head = 16384
max_headers = 50

[admin]
listen = "[::1]:9901"

[upstreams.b]
builtin = "echo"

[upstreams.a]
targets = ["127.0.0.1:9001", "[::1]:9002"]
balance = "round_robin"
connect_timeout = "250ms"
read_timeout = "1h"
idle_timeout = "90s"
max_idle = 0
max_requests = 1

[[routes]]
host = "API.Example.com."
path_prefix = "/v1/"
methods = ["get", "Post", "GET"]
upstream = "a"
strip_prefix = true
host_rewrite = "backend.internal:9001"

[[routes]]
host = "*.Example.com"
path_prefix = "/"
respond = { status = 403, body = "no\n", headers = { "x-b" = "2", "content-type" = "text/plain", "x-a" = "1" } }
"#,
    );
    let server = &config.server;
    assert_eq!(
        server.listen,
        [plain("127.0.0.1:8080"), plain("[::1]:8081")]
    );
    assert_eq!(
        server.workers,
        Workers::Count(NonZeroUsize::MIN.saturating_add(2))
    );
    assert!(!server.pin);
    assert_eq!(server.driver, Driver::IoUring);
    assert_eq!(server.drain_timeout, Duration::from_secs(5));
    assert_eq!(server.max_connections, 100);
    assert_eq!(server.header_timeout, Duration::from_secs(2));
    assert_eq!(server.keepalive_timeout, Duration::from_secs(300));
    assert_eq!(server.max_body, 16 << 20);
    assert_eq!(
        server.limits,
        Limits {
            max_request_line: 4096,
            max_head: 16384,
            max_headers: 50,
            ..Limits::DEFAULT
        }
    );
    assert_eq!(
        config.admin.as_ref().map(|a| a.listen),
        Some(addr("[::1]:9901"))
    );

    // File order, not name order: route indices and summaries follow the file.
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
    let a = &config.upstreams[1];
    assert_eq!(
        a.kind,
        UpstreamKind::Targets(vec![addr("127.0.0.1:9001"), addr("[::1]:9002")])
    );
    assert_eq!(a.connect_timeout, Duration::from_millis(250));
    assert_eq!(a.read_timeout, Duration::from_secs(3600));
    assert_eq!(a.idle_timeout, Duration::from_secs(90));
    assert_eq!(a.max_idle, 0);
    assert_eq!(a.max_requests, 1);

    let api = &config.routes[0];
    assert_eq!(api.host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(api.methods, Some(vec!["GET".to_owned(), "POST".to_owned()]));
    assert_eq!(
        api.action,
        Action::Proxy {
            upstream: 1,
            strip_prefix: true,
            host_rewrite: Some("backend.internal:9001".into())
        }
    );
    let wild = &config.routes[1];
    assert_eq!(wild.host, HostMatch::Suffix(".example.com".into()));
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        wild.action,
        Action::Respond {
            status: 403,
            body: "no\n".into(),
            headers: vec![
                pair("x-b", "2"),
                pair("content-type", "text/plain"),
                pair("x-a", "1")
            ],
        }
    );
}

#[test]
fn error_display() {
    let err = match config::parse(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n"),
        "/etc/ringgate.toml",
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted a route to a missing upstream"),
    };
    assert_eq!(
        err,
        "/etc/ringgate.toml:5:12: routes[0].upstream: no upstream named `nope` (defined: none)"
    );
}

#[test]
fn load_reports_missing_file() {
    match config::load(Path::new("/nonexistent/ringgate.toml")) {
        Err(ConfigError::Io { path, source }) => {
            assert_eq!(path, Path::new("/nonexistent/ringgate.toml"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

// ---- rejections found by validation ----

#[test]
fn rate_limits() {
    let text = format!(
        "{SERVER}[rate_limits.per_ip]\nkey = \"client_ip\"\nrate = \"10/m\"\nburst = 5\n\
         [upstreams.api]\nbuiltin = \"echo\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nrate_limit = \"per_ip\"\n"
    );
    let config = parse(&text);
    let policy = &config.rate_limits[0];
    assert_eq!(
        (policy.rate, policy.per, policy.burst),
        (10, Duration::from_secs(60), 5)
    );
    assert_eq!((policy.max_keys, policy.headers), (100_000, false));
    assert_eq!(config.routes[0].rate_limit, Some(0));

    let missing = format!(
        "{SERVER}[upstreams.api]\nbuiltin = \"echo\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nrate_limit = \"nope\"\n"
    );
    assert_rejects(
        &missing,
        8,
        14,
        "routes[0].rate_limit",
        "no rate limit named `nope`",
    );
    let bad_rate =
        format!("{SERVER}[rate_limits.x]\nkey = \"route\"\nrate = \"10 per s\"\nburst = 1\n");
    assert_rejects(&bad_rate, 5, 8, "rate_limits.x.rate", "must look like");
    let bad_key = format!("{SERVER}[rate_limits.x]\nkey = \"cookie\"\nrate = \"1/s\"\nburst = 1\n");
    assert_rejects(&bad_key, 4, 7, "rate_limits.x.key", "must be");
}

#[test]
fn cache_settings() {
    let text = format!(
        "{SERVER}[cache]\nmemory = \"64MiB\"\npurge_allow = [\"10.0.0.0/8\", \"::1\"]\n\
         [upstreams.api]\nbuiltin = \"echo\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\ncache = {{ ttl = \"30s\" }}\n"
    );
    let config = parse(&text);
    let cache = config.cache.as_ref().unwrap();
    assert_eq!((cache.memory, cache.max_object), (64 << 20, 1 << 20));
    assert!(cache.purge_allow[0].contains("10.1.2.3".parse().unwrap()));
    assert!(!cache.purge_allow[0].contains("11.0.0.1".parse().unwrap()));
    assert!(cache.purge_allow[1].contains("::1".parse().unwrap()));
    assert_eq!(
        config.routes[0].cache.unwrap().ttl,
        Some(Duration::from_secs(30))
    );

    let no_section = format!(
        "{SERVER}[upstreams.api]\nbuiltin = \"echo\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\ncache = true\n"
    );
    assert_rejects(
        &no_section,
        8,
        9,
        "routes[0].cache",
        "needs a [cache] section",
    );
    let bad_block = format!("{SERVER}[cache]\npurge_allow = [\"10.0.0.0/33\"]\n");
    assert_rejects(&bad_block, 4, 16, "cache.purge_allow[0]", "address block");
}

#[test]
fn access_log_settings() {
    let config = parse(&format!(
        "{SERVER}[log]\naccess = \"/var/log/ringgate/access.log\"\nformat = \"combined\"\n"
    ));
    assert_eq!(
        config.log,
        ringgate::config::LogSettings {
            access: ringgate::config::AccessLog::File("/var/log/ringgate/access.log".into()),
            format: ringgate::config::LogFormat::Combined,
        }
    );
    let relative = format!("{SERVER}[log]\naccess = \"access.log\"\n");
    assert_rejects(&relative, 4, 10, "log.access", "absolute file path");
}

#[test]
fn route_to_missing_upstream() {
    let text = format!(
        "{SERVER}[upstreams.api]\nbuiltin = \"echo\"\n\
         [[routes]]\npath_prefix = \"/a/\"\nupstream = \"api\"\n\
         [[routes]]\npath_prefix = \"/b/\"\nupstream = \"apj\"\n"
    );
    assert_rejects(
        &text,
        10,
        12,
        "routes[1].upstream",
        "no upstream named `apj` (defined: api)",
    );
}

#[test]
fn duplicate_routes() {
    let route = |methods: &str| {
        format!("[[routes]]\nhost = \"a.example\"\npath_prefix = \"/x/\"\n{methods}respond = {{ status = 200 }}\n")
    };
    // Lines: 1-2 server, 3-6 first route, 7 the second [[routes]].
    let text = format!("{SERVER}{}{}", route(""), route(""));
    assert_rejects(&text, 7, 1, "routes[1]", "duplicates routes[0] (line 3)");

    let text = format!(
        "{SERVER}{}{}",
        route("methods = [\"GET\", \"PUT\"]\n"),
        route("methods = [\"put\"]\n")
    );
    assert_rejects(&text, 8, 1, "routes[1]", "duplicates routes[0]");

    // Any method overlaps every method.
    let text = format!("{SERVER}{}{}", route("methods = [\"GET\"]\n"), route(""));
    assert_rejects(&text, 8, 1, "routes[1]", "duplicates routes[0]");

    // Disjoint methods, another host or another prefix: not duplicates.
    parse(&format!(
        "{SERVER}{}{}",
        route("methods = [\"GET\"]\n"),
        route("methods = [\"POST\"]\n")
    ));
    parse(&format!(
        "{SERVER}{}[[routes]]\nhost = \"b.example\"\npath_prefix = \"/x/\"\nrespond = {{ status = 200 }}\n\
         [[routes]]\nhost = \"a.example\"\npath_prefix = \"/x\"\nrespond = {{ status = 200 }}\n",
        route("")
    ));
}

#[test]
fn upstream_needs_targets_or_builtin() {
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\ntargets = []\n"),
        4,
        11,
        "upstreams.api.targets",
        "at least one address",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\nread_timeout = \"1s\"\n"),
        3,
        12,
        "upstreams.api",
        "needs `targets",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\nbuiltin = \"echo\"\ntargets = [\"127.0.0.1:1\"]\n"),
        5,
        11,
        "upstreams.api.targets",
        "cannot be combined with `builtin`",
    );
    // Names that are not bare keys are quoted in the key path.
    assert_rejects(
        &format!("{SERVER}[upstreams.\"my api\"]\nmax_requests = 0\nbuiltin = \"echo\"\n"),
        4,
        16,
        "upstreams.\"my api\".max_requests",
        "between 1 and",
    );
}

#[test]
fn workers_zero() {
    assert_rejects(
        &format!("{SERVER}workers = 0\n"),
        3,
        11,
        "server.workers",
        "at least 1",
    );
    assert_rejects(
        &format!("{SERVER}workers = -2\n"),
        3,
        11,
        "server.workers",
        "at least 1",
    );
    assert_rejects(
        &format!("{SERVER}workers = \"all\"\n"),
        3,
        11,
        "server.workers",
        "\"auto\"",
    );
}

#[test]
fn bad_addresses() {
    assert_rejects(
        "[server]\nlisten = [\"127.0.0.1:8080\", \"localhost:80\"]\n",
        2,
        29,
        "server.listen[1]",
        "`localhost:80` is not an IP:port address",
    );
    assert_rejects(
        "[server]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n",
        2,
        29,
        "server.listen[1]",
        "listed twice",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\ntargets = [\"127.0.0.1\"]\n"),
        4,
        12,
        "upstreams.api.targets[0]",
        "not an IP:port",
    );
    assert_rejects(
        &format!("{SERVER}[admin]\nlisten = \":9901\"\n"),
        4,
        10,
        "admin.listen",
        "not an IP:port",
    );
}

#[test]
fn empty_listen() {
    assert_rejects(
        "[server]\nlisten = []\n",
        2,
        10,
        "server.listen",
        "at least one address",
    );
}

#[test]
fn route_needs_one_action() {
    assert_rejects(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\n"),
        3,
        1,
        "routes[0]",
        "needs `upstream",
    );
    // An inline route's position is its opening brace.
    assert_rejects(
        &format!("routes = [{{ path_prefix = \"/\" }}]\n{SERVER}"),
        1,
        11,
        "routes[0]",
        "needs `upstream",
    );
    assert_rejects(
        &format!(
            "{SERVER}[upstreams.api]\nbuiltin = \"echo\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nrespond = {{ status = 200 }}\n"
        ),
        7,
        12,
        "routes[0].upstream",
        "cannot be combined with `respond`",
    );
    assert_rejects(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nstrip_prefix = true\nrespond = {{ status = 200 }}\n"),
        5,
        16,
        "routes[0].strip_prefix",
        "only applies to routes with an `upstream`",
    );
}

#[test]
fn respond_status_range() {
    let route = |status: &str| {
        format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = {status} }}\n")
    };
    assert_rejects(
        &route("700"),
        5,
        22,
        "routes[0].respond.status",
        "between 100 and 599",
    );
    assert_rejects(
        &route("99"),
        5,
        22,
        "routes[0].respond.status",
        "between 100 and 599",
    );
    assert_rejects(
        &route("-200"),
        5,
        22,
        "routes[0].respond.status",
        "between 100 and 599",
    );
    parse(&route("100"));
    parse(&route("599"));
    assert_rejects(
        &format!(
            "{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 204, body = \"x\" }}\n"
        ),
        5,
        22,
        "routes[0].respond.body",
        "a 204 response cannot have a body",
    );
    assert_rejects(
        &format!(
            "{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200, headers = {{ \"x-a\" = \"1\\r\\nx-b: 2\" }} }}\n"
        ),
        5,
        47,
        "routes[0].respond.headers.x-a",
        "control characters",
    );
    assert_rejects(
        &format!(
            "{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200, headers = {{ \"Content-Length\" = \"3\" }} }}\n"
        ),
        5,
        39,
        "routes[0].respond.headers.Content-Length",
        "set by the gateway",
    );
}

#[test]
fn path_prefix_must_start_with_slash() {
    let route = |prefix: &str| {
        format!("{SERVER}[[routes]]\npath_prefix = \"{prefix}\"\nrespond = {{ status = 200 }}\n")
    };
    assert_rejects(
        &route("api/"),
        4,
        15,
        "routes[0].path_prefix",
        "must start with '/'",
    );
    assert_rejects(
        &route(""),
        4,
        15,
        "routes[0].path_prefix",
        "must start with '/'",
    );
    assert_rejects(
        &route("/a b"),
        4,
        15,
        "routes[0].path_prefix",
        "visible ASCII",
    );
}

#[test]
fn host_patterns() {
    let route = |host: &str| {
        format!("{SERVER}[[routes]]\nhost = \"{host}\"\npath_prefix = \"/\"\nrespond = {{ status = 200 }}\n")
    };
    for bad in [
        "a.*.example.com",
        "*example.com",
        "*.*.example.com",
        "*",
        "example.*",
        "ex ample.com",
        "",
        "a..b",
        "*.",
    ] {
        assert_rejects(&route(bad), 4, 8, "routes[0].host", "");
    }
    assert_rejects(
        &route("example.com:8080"),
        4,
        8,
        "routes[0].host",
        "drop \":8080\"",
    );
    assert_rejects(
        &route("[::1"),
        4,
        8,
        "routes[0].host",
        "not a bracketed IPv6 address",
    );

    let host = |pattern: &str| parse(&route(pattern)).routes[0].host.clone();
    assert_eq!(host("Example.COM"), HostMatch::Exact("example.com".into()));
    assert_eq!(host("example.com."), HostMatch::Exact("example.com".into()));
    assert_eq!(
        host("*.Example.com"),
        HostMatch::Suffix(".example.com".into())
    );
    assert_eq!(host("10.0.0.1"), HostMatch::Exact("10.0.0.1".into()));
    assert_eq!(host("[::1]"), HostMatch::Exact("[::1]".into()));
}

#[test]
fn methods_list() {
    let route = |methods: &str| {
        format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nmethods = {methods}\nrespond = {{ status = 200 }}\n")
    };
    assert_rejects(
        &route("[]"),
        5,
        11,
        "routes[0].methods",
        "must not be empty",
    );
    assert_rejects(
        &route("[\"GET\", \"G T\"]"),
        5,
        19,
        "routes[0].methods[1]",
        "not a method name",
    );
}

#[test]
fn server_limits() {
    assert_rejects(
        &format!("{SERVER}max_connections = 0\n"),
        3,
        19,
        "server.max_connections",
        "at least 1",
    );
    assert_rejects(
        &format!("{SERVER}max_head = 0\n"),
        3,
        12,
        "server.max_head",
        "at least 1 byte",
    );
    assert_rejects(
        &format!("{SERVER}max_head = \"4GiB\"\n"),
        3,
        12,
        "server.max_head",
        "below 4GiB",
    );
    assert_rejects(
        &format!("{SERVER}max_head = \"8KiB\"\nmax_request_line = \"9KiB\"\n"),
        4,
        20,
        "server.max_request_line",
        "at most max_head (8192 bytes)",
    );
    assert_rejects(
        &format!("{SERVER}max_headers = 0\n"),
        3,
        15,
        "server.max_headers",
        "at least 1",
    );
    assert_rejects(
        &format!("{SERVER}max_headers = 9000\n"),
        3,
        15,
        "server.max_headers",
        "max_head / 4 (8192)",
    );
    assert_rejects(
        &format!("{SERVER}header_timeout = \"0s\"\n"),
        3,
        18,
        "server.header_timeout",
        "longer than zero",
    );
    // Defaults the operator did not write shrink to fit a small max_head instead of failing.
    let limits = parse(&format!("{SERVER}max_head = 256\n")).server.limits;
    assert_eq!(
        (limits.max_head, limits.max_request_line, limits.max_headers),
        (256, 256, 64)
    );
}

// ---- rejections found by toml itself ----

#[test]
fn unknown_keys_are_named() {
    assert_rejects(
        &format!("{SERVER}workerz = 2\n"),
        3,
        1,
        "server.workerz",
        "unknown field `workerz`",
    );
    assert_rejects(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\n[[routes]]\npath_prefx = \"/\"\n"),
        6,
        1,
        "routes[1].path_prefx",
        "unknown field `path_prefx`",
    );
    // After [server], a root key belongs to [server].
    assert_rejects(
        &format!("{SERVER}routes = []\n"),
        3,
        1,
        "server.routes",
        "unknown field `routes`",
    );
    assert_rejects(
        &format!("{SERVER}[srever]\nx = 1\n"),
        3,
        2,
        "srever",
        "unknown field `srever`",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\nbuiltin = \"echo\"\nconect_timeout = \"1s\"\n"),
        5,
        1,
        "upstreams.api.conect_timeout",
        "unknown field `conect_timeout`",
    );
    assert_rejects(
        &format!(
            "{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200, bodyy = \"\" }}\n"
        ),
        5,
        27,
        "routes[0].respond.bodyy",
        "unknown field `bodyy`",
    );
}

#[test]
fn wrong_types_are_placed() {
    assert_rejects(
        &format!("{SERVER}pin = \"yes\"\n"),
        3,
        7,
        "server.pin",
        "invalid type",
    );
    assert_rejects(
        &format!("{SERVER}driver = \"uring\"\n"),
        3,
        10,
        "server.driver",
        "unknown variant `uring`",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\nbuiltin = \"cat\"\n"),
        4,
        11,
        "upstreams.api.builtin",
        "unknown variant `cat`",
    );
    assert_rejects(
        &format!("{SERVER}[upstreams.api]\ntargets = [\"127.0.0.1:1\", 2]\n"),
        4,
        27,
        "upstreams.api.targets[1]",
        "invalid type",
    );
    assert_rejects(
        "[server]\nlisten = \"127.0.0.1:8080\"\n",
        2,
        10,
        "server.listen",
        "invalid type",
    );
}

#[test]
fn missing_keys_are_placed() {
    assert_rejects("# nothing\n", 1, 1, "server", "missing [server] section");
    assert_rejects(
        "[admin]\nlisten = \"127.0.0.1:1\"\n[server]\nworkers = 1\n",
        3,
        1,
        "server",
        "missing field `listen`",
    );
    assert_rejects(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ status = 200 }}\n[[routes]]\nupstream = \"x\"\n"),
        6,
        1,
        "routes[1]",
        "missing field `path_prefix`",
    );
    assert_rejects(
        &format!("{SERVER}[[routes]]\npath_prefix = \"/\"\nrespond = {{ body = \"\" }}\n"),
        5,
        11,
        "routes[0].respond",
        "missing field `status`",
    );
}

#[test]
fn syntax_errors_have_a_position() {
    let (line, column, key, message) =
        reject("[server]\nlisten = [\"127.0.0.1:8080\"\nworkers = 2\n");
    assert_eq!((line, key.as_str()), (3, ""), "{column}: {message}");
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );

    let (line, column, _, _) = reject("[server]\nlisten = [\"127.0.0.1:8080\"]\npin = tru\n");
    assert_eq!((line, column), (3, 7));

    // Without a key the message reads `origin:line:column: message`.
    match config::parse("[server\n", "t.toml") {
        Err(e) => assert!(e.to_string().starts_with("t.toml:1:"), "{e}"),
        Ok(_) => panic!("accepted a broken header"),
    }
    // A key defined twice is toml's error, with the position of the second.
    let (line, column, _, message) = reject("[server]\nlisten = []\nlisten = []\n");
    assert_eq!((line, column), (3, 1), "{message}");
}

// ---- units ----

fn drain(value: &str) -> Result<Duration, String> {
    match config::parse(&format!("{SERVER}drain_timeout = {value}\n"), "t.toml") {
        Ok(config) => Ok(config.server.drain_timeout),
        Err(ConfigError::Invalid {
            line: 3,
            column: 17,
            key,
            message,
            ..
        }) if key == "server.drain_timeout" => Err(message),
        Err(e) => panic!("wrong error for {value}: {e}"),
    }
}

fn max_body(value: &str) -> Result<u64, String> {
    match config::parse(&format!("{SERVER}max_body = {value}\n"), "t.toml") {
        Ok(config) => Ok(config.server.max_body),
        Err(ConfigError::Invalid {
            line: 3,
            column: 12,
            key,
            message,
            ..
        }) if key == "server.max_body" => Err(message),
        Err(e) => panic!("wrong error for {value}: {e}"),
    }
}

#[test]
fn durations() {
    assert_eq!(drain("\"250ms\""), Ok(Duration::from_millis(250)));
    assert_eq!(drain("\"30s\""), Ok(Duration::from_secs(30)));
    assert_eq!(drain("\"5m\""), Ok(Duration::from_secs(300)));
    assert_eq!(drain("\"1h\""), Ok(Duration::from_secs(3600)));
    assert_eq!(drain("\"0s\""), Ok(Duration::ZERO));
    assert_eq!(drain("\"007s\""), Ok(Duration::from_secs(7)));

    let err = |value: &str| match drain(value) {
        Err(message) => message,
        Ok(d) => panic!("{value} parsed as {d:?}"),
    };
    assert!(err("\"30\"").contains("needs a unit"));
    assert!(err("30").contains("needs a unit: \"30s\""));
    assert!(err("\"1d\"").contains("unknown unit `d`"));
    assert!(err("\"30 s\"").contains("unknown unit ` s`"));
    assert!(err("\"30S\"").contains("unknown unit `S`"));
    assert!(err("\"1.5s\"").contains("unknown unit `.5s`"));
    assert!(err("\"s\"").contains("is not a duration"));
    assert!(err("\"-1s\"").contains("is not a duration"));
    assert!(err("\"\"").contains("is not a duration"));
    assert!(err("\"99999999999999999999s\"").contains("too large"));
    assert!(err("\"9999999999999999h\"").contains("too long"));
    assert!(err("true").contains("found a boolean"));
}

#[test]
fn sizes() {
    assert_eq!(max_body("\"16KiB\""), Ok(16 * 1024));
    assert_eq!(max_body("\"256MiB\""), Ok(256 << 20));
    assert_eq!(max_body("\"1GiB\""), Ok(1 << 30));
    assert_eq!(max_body("\"512B\""), Ok(512));
    assert_eq!(max_body("4096"), Ok(4096));
    assert_eq!(max_body("0"), Ok(0));

    let err = |value: &str| match max_body(value) {
        Err(message) => message,
        Ok(n) => panic!("{value} parsed as {n}"),
    };
    assert!(err("\"1GB\"").contains("unknown unit `GB`"));
    assert!(err("\"16kib\"").contains("unknown unit `kib`"));
    assert!(err("\"16 KiB\"").contains("unknown unit ` KiB`"));
    assert!(err("\"4096\"").contains("needs a unit"));
    assert!(err("\"KiB\"").contains("is not a size"));
    assert!(err("-1").contains("must not be negative"));
    assert!(err("\"99999999999GiB\"").contains("too large"));
    assert!(err("1.5").contains("found a float"));
}
