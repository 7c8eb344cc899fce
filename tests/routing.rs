//! Route precedence, Host normalisation and snapshot publication, plus a differential test of
//! the table against a direct reading of the precedence rules.

use std::sync::Arc;

use proptest::prelude::*;
use ringgate::config::{self, Action, Config, HostMatch, Route};
use ringgate::routing::{RouteTable, SharedSnapshot, Snapshot};

fn route(host: &str, prefix: &str, methods: &[&str]) -> Route {
    let host = if host.is_empty() {
        HostMatch::Any
    } else if let Some(suffix) = host.strip_prefix('*') {
        HostMatch::Suffix(suffix.to_owned())
    } else {
        HostMatch::Exact(host.to_owned())
    };
    Route {
        host,
        path_prefix: prefix.to_owned(),
        methods: (!methods.is_empty()).then(|| methods.iter().map(|m| (*m).to_owned()).collect()),
        action: Action::Respond {
            status: 200,
            body: String::new(),
            headers: Vec::new(),
        },
        rate_limit: None,
        cache: None,
    }
}

/// `(host, prefix, methods)`; a host starting with `*` is a wildcard, "" is host-less.
fn table(routes: &[(&str, &str, &[&str])]) -> RouteTable {
    let routes: Vec<Route> = routes.iter().map(|&(h, p, m)| route(h, p, m)).collect();
    RouteTable::new(&routes)
}

fn find(table: &RouteTable, host: &str, path: &str, method: &str) -> Option<usize> {
    table.find(host.as_bytes(), path.as_bytes(), method.as_bytes())
}

#[test]
fn exact_then_wildcard_then_hostless() {
    let t = table(&[
        ("", "/", &[]),
        ("*.example.com", "/", &[]),
        ("api.example.com", "/", &[]),
        ("*.b.example.com", "/", &[]),
    ]);
    assert_eq!(find(&t, "api.example.com", "/x", "GET"), Some(2));
    assert_eq!(find(&t, "www.example.com", "/x", "GET"), Some(1));
    // The longest matching suffix wins, at any depth.
    assert_eq!(find(&t, "a.b.example.com", "/x", "GET"), Some(3));
    assert_eq!(find(&t, "x.y.a.b.example.com", "/x", "GET"), Some(3));
    assert_eq!(find(&t, "x.y.example.com", "/x", "GET"), Some(1));
    // A wildcard does not match its own apex, nor a name that merely ends in it.
    assert_eq!(find(&t, "example.com", "/x", "GET"), Some(0));
    assert_eq!(find(&t, "b.example.com", "/x", "GET"), Some(1));
    assert_eq!(find(&t, "notexample.com", "/x", "GET"), Some(0));
    assert_eq!(find(&t, ".example.com", "/x", "GET"), Some(0));
    assert_eq!(find(&t, "other.org", "/x", "GET"), Some(0));
    assert_eq!(find(&t, "", "/x", "GET"), Some(0));
}

#[test]
fn host_group_beats_a_longer_hostless_prefix() {
    let t = table(&[("", "/api/v1/", &[]), ("api.example.com", "/", &[])]);
    assert_eq!(find(&t, "api.example.com", "/api/v1/users", "GET"), Some(1));
    assert_eq!(find(&t, "other", "/api/v1/users", "GET"), Some(0));
}

#[test]
fn host_normalisation() {
    let t = table(&[
        ("a.example", "/", &[]),
        ("[::1]", "/", &[]),
        ("10.0.0.1", "/", &[]),
        ("*.w.example", "/", &[]),
    ]);
    for host in [
        "a.example",
        "a.example:8080",
        "A.Example",
        "A.EXAMPLE:443",
        "a.example.",
        "a.example.:80",
        "a.example:",
    ] {
        assert_eq!(find(&t, host, "/", "GET"), Some(0), "{host}");
    }
    for host in ["[::1]", "[::1]:8080"] {
        assert_eq!(find(&t, host, "/", "GET"), Some(1), "{host}");
    }
    assert_eq!(find(&t, "10.0.0.1:80", "/", "GET"), Some(2));
    for host in ["X.W.Example", "x.w.example.:8443", "deep.x.W.EXAMPLE:1"] {
        assert_eq!(find(&t, host, "/", "GET"), Some(3), "{host}");
    }
    for host in [
        "a.example.com",
        "b.example",
        "a.examplex",
        "[::2]",
        "a.example..",
        "",
    ] {
        assert_eq!(find(&t, host, "/", "GET"), None, "{host}");
    }
}

#[test]
fn overlong_host_gets_hostless_routes_only() {
    let t = table(&[("", "/", &[]), ("*.example.com", "/", &[])]);
    let long = format!("{}.example.com", "a".repeat(300));
    assert_eq!(find(&t, &long, "/", "GET"), Some(0));
    let fits = format!("{}.example.com", "a".repeat(200));
    assert_eq!(find(&t, &fits, "/", "GET"), Some(1));
}

#[test]
fn longest_prefix_wins() {
    let t = table(&[
        ("", "/", &[]),
        ("", "/api/", &[]),
        ("", "/api/v1/", &[]),
        ("", "/api/v1/users", &[]),
        ("", "/apix", &[]),
    ]);
    assert_eq!(find(&t, "h", "/", "GET"), Some(0));
    assert_eq!(find(&t, "h", "/index.html", "GET"), Some(0));
    assert_eq!(find(&t, "h", "/api", "GET"), Some(0));
    assert_eq!(find(&t, "h", "/api/", "GET"), Some(1));
    assert_eq!(find(&t, "h", "/api/v2/x", "GET"), Some(1));
    assert_eq!(find(&t, "h", "/api/v1/", "GET"), Some(2));
    assert_eq!(find(&t, "h", "/api/v1/usersX", "GET"), Some(3));
    assert_eq!(find(&t, "h", "/apix/y", "GET"), Some(4));
    // Prefixes are bytes: no segment or case folding.
    assert_eq!(find(&t, "h", "/API/", "GET"), Some(0));
}

#[test]
fn methods_fall_through() {
    let t = table(&[
        ("", "/api/", &[]),
        ("", "/api/orders/", &["GET"]),
        ("", "/api/orders/", &["POST", "PUT"]),
        ("api.example", "/api/", &["DELETE"]),
        ("*.example", "/api/orders/", &["PATCH"]),
    ]);
    // Within a group: the longest prefix that allows the method, else a shorter one.
    assert_eq!(find(&t, "h", "/api/orders/1", "GET"), Some(1));
    assert_eq!(find(&t, "h", "/api/orders/1", "PUT"), Some(2));
    assert_eq!(find(&t, "h", "/api/orders/1", "HEAD"), Some(0));
    // Across groups: exact host, then wildcard, then host-less.
    assert_eq!(find(&t, "api.example", "/api/orders/1", "DELETE"), Some(3));
    assert_eq!(find(&t, "api.example", "/api/orders/1", "PATCH"), Some(4));
    assert_eq!(find(&t, "api.example", "/api/orders/1", "POST"), Some(2));
    assert_eq!(find(&t, "api.example", "/api/x", "PATCH"), Some(0));
    // Methods are case-sensitive (RFC 9110 §9.1).
    assert_eq!(find(&t, "h", "/api/orders/1", "get"), Some(0));
}

#[test]
fn no_route_is_none() {
    let t = table(&[("", "/api/", &["GET"]), ("a.example", "/", &[])]);
    assert_eq!(find(&t, "h", "/other", "GET"), None);
    assert_eq!(find(&t, "h", "/api/", "POST"), None);
    assert_eq!(find(&t, "h", "", "GET"), None);
    assert_eq!(find(&table(&[]), "a.example", "/", "GET"), None);
}

#[test]
fn first_of_duplicates_wins() {
    // The validator rejects these; the table still answers deterministically.
    let t = table(&[
        ("", "/a/", &["GET"]),
        ("", "/a/", &[]),
        ("A.example", "/", &[]),
        ("a.example", "/", &[]),
    ]);
    assert_eq!(find(&t, "h", "/a/", "GET"), Some(0));
    assert_eq!(find(&t, "h", "/a/", "POST"), Some(1));
    assert_eq!(find(&t, "a.example", "/", "GET"), Some(2));
}

#[test]
fn table_from_config_file() {
    let config = match config::parse(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/examples/api-gateway.toml"
        ))
        .unwrap_or_default(),
        "api-gateway.toml",
    ) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    let t = RouteTable::new(&config.routes);
    assert_eq!(find(&t, "api.example.com", "/v1/orders/7", "POST"), Some(0));
    assert_eq!(
        find(&t, "API.example.com:8080", "/v1/users", "GET"),
        Some(1)
    );
    assert_eq!(find(&t, "api.example.com", "/v1/users", "POST"), Some(4));
    assert_eq!(find(&t, "api.example.com", "/healthz", "GET"), Some(3));
    assert_eq!(find(&t, "acme.shop.example.com", "/cart", "GET"), Some(2));
    assert_eq!(
        find(&t, "acme.shop.example.com", "/healthz", "GET"),
        Some(2)
    );
    assert_eq!(find(&t, "shop.example.com", "/healthz", "GET"), Some(3));
}

fn config_with_prefix(prefix: &str) -> Config {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n[[routes]]\npath_prefix = \"{prefix}\"\nrespond = {{ status = 200 }}\n"
    );
    match config::parse(&text, "t.toml") {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn snapshot_publish_reaches_local_handles() {
    let shared = Arc::new(SharedSnapshot::new(config_with_prefix("/old/")));
    let mut local = shared.handle();
    let first = Arc::clone(local.load());
    assert_eq!(first.generation, 0);
    assert_eq!(first.table.find(b"h", b"/old/x", b"GET"), Some(0));
    assert_eq!(first.table.find(b"h", b"/new/x", b"GET"), None);

    let publisher = Arc::clone(&shared);
    let generation = std::thread::spawn(move || publisher.publish(config_with_prefix("/new/")))
        .join()
        .unwrap_or_default();
    assert_eq!(generation, 1);

    let now = local.load();
    assert_eq!(now.generation, 1);
    assert_eq!(now.config.routes[0].path_prefix, "/new/");
    assert_eq!(now.table.find(b"h", b"/new/x", b"GET"), Some(0));
    // A request that loaded the old snapshot keeps it.
    assert_eq!(first.table.find(b"h", b"/old/x", b"GET"), Some(0));

    // Handles made later start at the latest; generations keep rising.
    assert_eq!(shared.publish(config_with_prefix("/newer/")), 2);
    assert_eq!(shared.handle().load().generation, 2);
    assert_eq!(local.load().generation, 2);
}

#[test]
fn snapshot_from_a_given_generation() {
    let shared = SharedSnapshot::new(Snapshot::new(41, config_with_prefix("/")));
    assert_eq!(shared.handle().load().generation, 41);
    assert_eq!(shared.publish(config_with_prefix("/")), 42);
}

// ---- the table against the rules, read directly ----

const HOSTS: [&str; 6] = ["", "a.x", "b.a.x", "*.x", "*.a.x", "*.b.a.x"];
const PREFIXES: [&str; 7] = ["/", "/a", "/a/", "/a/b", "/ab", "/b/", "/a/b/c"];
const METHODS: [&str; 3] = ["GET", "POST", "PUT"];

fn host_matches(host: &HostMatch, name: &str) -> Option<usize> {
    // Precedence rank: exact 0, wildcards by length (longer first), host-less last.
    match host {
        HostMatch::Exact(h) => (h == name).then_some(0),
        HostMatch::Suffix(s) => {
            (name.len() > s.len() && name.ends_with(s.as_str())).then(|| 1000 - s.len())
        }
        HostMatch::Any => Some(usize::MAX),
    }
}

/// The precedence rules as the docs state them, by brute force.
fn reference(routes: &[Route], host: &str, path: &str, method: &str) -> Option<usize> {
    let name = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    let mut ranks: Vec<usize> = routes
        .iter()
        .filter_map(|r| host_matches(&r.host, name))
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    for rank in ranks {
        let best = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| host_matches(&r.host, name) == Some(rank))
            .filter(|(_, r)| path.starts_with(r.path_prefix.as_str()))
            .filter(|(_, r)| {
                r.methods
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|m| m == method))
            })
            // Longest prefix; among equals, the first.
            .max_by_key(|(i, r)| (r.path_prefix.len(), std::cmp::Reverse(*i)));
        if let Some((i, _)) = best {
            return Some(i);
        }
    }
    None
}

fn arb_route() -> impl Strategy<Value = Route> {
    (
        prop::sample::select(&HOSTS[..]),
        prop::sample::select(&PREFIXES[..]),
        prop::sample::subsequence(&METHODS[..], 0..=2),
    )
        .prop_map(|(host, prefix, methods)| route(host, prefix, &methods))
}

proptest! {
    #[test]
    fn table_agrees_with_the_rules(
        routes in prop::collection::vec(arb_route(), 0..24),
        host in prop::sample::select(&["a.x", "A.X:80", "b.a.x", "c.b.a.x.", "z.a.x", "x", "q.x", "other", ""][..]),
        path in prop::sample::select(&["/", "/a", "/a/", "/a/b", "/a/b/c/d", "/ab", "/abc", "/b/", "/c", ""][..]),
        method in prop::sample::select(&METHODS[..]),
    ) {
        let t = RouteTable::new(&routes);
        prop_assert_eq!(
            t.find(host.as_bytes(), path.as_bytes(), method.as_bytes()),
            reference(&routes, host, path, method)
        );
    }
}
