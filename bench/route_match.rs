//! `cargo bench --bench route_match`: `RouteTable::find` on a 1,000-route table (400 routes on
//! 200 exact hosts, 200 on 100 wildcards, 400 host-less prefixes, a third with methods) for a
//! hit on an exact host, a hit on a wildcard, a fall-through from a host to a host-less route,
//! and a miss.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use ringgate::config::{Action, HostMatch, Route};
use ringgate::routing::RouteTable;

struct Case {
    name: &'static str,
    host: &'static [u8],
    path: &'static [u8],
    method: &'static [u8],
    /// The index [`routes`] puts the expected route at.
    route: Option<usize>,
}

const CASES: [Case; 4] = [
    Case {
        name: "exact_host",
        host: b"svc123.internal.example.com",
        path: b"/v3/orders/42",
        method: b"GET",
        route: Some(2 * 123),
    },
    Case {
        name: "wildcard",
        host: b"Shop.T42.example.net:8443",
        path: b"/static/app.js",
        method: b"GET",
        route: Some(400 + 2 * 42 + 1),
    },
    Case {
        name: "fall_through_to_hostless",
        host: b"svc7.internal.example.com",
        path: b"/api/250/items",
        method: b"GET",
        route: Some(600 + 250),
    },
    Case {
        name: "miss",
        host: b"unknown.example.org",
        path: b"/missing/page",
        method: b"GET",
        route: None,
    },
];

fn route(host: HostMatch, prefix: String, methods: &[&str]) -> Route {
    Route {
        host,
        path_prefix: prefix,
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

fn routes() -> Vec<Route> {
    let mut routes = Vec::with_capacity(1000);
    for i in 0..200 {
        let host = || HostMatch::Exact(format!("svc{i}.internal.example.com"));
        routes.push(route(
            host(),
            format!("/v{}/orders/", i % 5),
            &["GET", "POST"],
        ));
        routes.push(route(host(), "/health".to_owned(), &["GET"]));
    }
    for i in 0..100 {
        let host = || HostMatch::Suffix(format!(".t{i}.example.net"));
        routes.push(route(host(), "/".to_owned(), &[]));
        routes.push(route(host(), "/static/".to_owned(), &["GET", "HEAD"]));
    }
    for i in 0..400 {
        let methods: &[&str] = if i % 3 == 0 { &["GET"] } else { &[] };
        routes.push(route(HostMatch::Any, format!("/api/{i}/"), methods));
    }
    routes
}

fn bench(c: &mut Criterion) {
    let routes = routes();
    let table = RouteTable::new(&routes);
    let mut group = c.benchmark_group("route_match");
    for case in CASES {
        // Checked once, so that each timing is of the lookup it is named after.
        let (host, path, method) = (case.host, case.path, case.method);
        assert_eq!(table.find(host, path, method), case.route, "{}", case.name);
        group.bench_function(case.name, |b| {
            b.iter(|| table.find(black_box(host), black_box(path), black_box(method)))
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
