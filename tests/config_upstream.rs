//! The upstream resilience keys (issue #9): balance policies and weighted targets,
//! `hash_key`, `timeout`, `health`, `outlier`, `breaker`, `retries`. Every key is read,
//! defaults are what the docs say, and every rejection names its line, column and key path.

use std::time::Duration;

#[path = "common/config_check.rs"]
mod config_check;

use config_check::{assert_rejects, parse};
use ringgate::config::{
    Balance, Breaker, HashKey, HealthCheck, OutlierDetection, Retries, RetryOn, StatusRange,
    UpstreamKind,
};

/// `[server]` on lines 1-2, `[upstreams.api]` on line 3, `lines` from line 4.
fn upstream(lines: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n[upstreams.api]\n{lines}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
    )
}

#[test]
fn every_key_is_read() {
    let config = parse(&upstream(
        r#"targets = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]
balance = "weighted"
timeout = "5s"
health = { path = "/ready", interval = "500ms", timeout = "200ms", healthy = 1, unhealthy = 4, expect_status = "200-299" }
outlier = { consecutive_failures = 4, base_ejection = "10s", max_ejection = "1m", max_ejected_percent = 30 }
breaker = { max_connections = 100, max_pending = 10, max_requests = 200 }
retries = { attempts = 3, on = ["connect-failure", "reset", "timeout", "503", "502"], budget = "12.5%", min_retries = 5, per_try_timeout = "1s" }"#,
    ));
    let api = &config.upstreams[0];
    assert_eq!(
        api.kind,
        UpstreamKind::Targets(vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap()
        ])
    );
    assert_eq!(api.weights, [1, 3]);
    assert_eq!(api.balance, Balance::Weighted);
    assert_eq!(api.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        api.health,
        Some(HealthCheck {
            path: "/ready".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            healthy: 1,
            unhealthy: 4,
            expect_status: StatusRange {
                first: 200,
                last: 299
            },
        })
    );
    assert_eq!(
        api.outlier,
        Some(OutlierDetection {
            consecutive_failures: 4,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 30,
        })
    );
    assert_eq!(
        api.breaker,
        Some(Breaker {
            max_connections: Some(100),
            max_pending: 10,
            max_requests: Some(200),
        })
    );
    assert_eq!(
        api.retries,
        Some(Retries {
            attempts: 3,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                timeout: true,
                statuses: vec![502, 503],
            },
            budget_permille: 125,
            min_retries: 5,
            per_try_timeout: Some(Duration::from_secs(1)),
        })
    );
    let summary = config.summary();
    assert!(
        summary.contains("(weight 3)")
            && summary.contains("weighted;")
            && summary.contains("retries 3 attempts"),
        "{summary}"
    );
}

#[test]
fn defaults() {
    let config = parse(&upstream(
        "targets = [\"127.0.0.1:9001\"]\nhealth = {}\noutlier = {}\nretries = {}\nbreaker = { max_requests = 8 }",
    ));
    let api = &config.upstreams[0];
    assert_eq!(api.balance, Balance::RoundRobin);
    assert_eq!(api.weights, [1]);
    assert_eq!(api.timeout, None);
    assert_eq!(
        api.health,
        Some(HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
            expect_status: StatusRange {
                first: 200,
                last: 399
            },
        })
    );
    assert_eq!(
        api.outlier,
        Some(OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        })
    );
    assert_eq!(
        api.breaker,
        Some(Breaker {
            max_connections: None,
            max_pending: 1024,
            max_requests: Some(8),
        })
    );
    assert_eq!(
        api.retries,
        Some(Retries {
            attempts: 2,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                timeout: false,
                statuses: vec![],
            },
            budget_permille: 200,
            min_retries: 3,
            per_try_timeout: None,
        })
    );
    // None of it unless asked for.
    let plain = parse(&upstream("targets = [\"127.0.0.1:9001\"]"));
    let api = &plain.upstreams[0];
    assert_eq!(
        (&api.health, &api.outlier, &api.breaker, &api.retries),
        (&None, &None, &None, &None)
    );
    // A long base ejection raises the default cap with it.
    let long = parse(&upstream(
        "targets = [\"127.0.0.1:9001\"]\noutlier = { base_ejection = \"10m\" }",
    ));
    assert_eq!(
        long.upstreams[0].outlier.map(|o| o.max_ejection),
        Some(Duration::from_secs(600))
    );
}

#[test]
fn balance_policies_and_hash_keys() {
    let policy = |lines: &str| {
        parse(&upstream(&format!("targets = [\"127.0.0.1:1\"]\n{lines}"))).upstreams[0]
            .balance
            .clone()
    };
    assert_eq!(policy("balance = \"round_robin\""), Balance::RoundRobin);
    assert_eq!(policy("balance = \"least_conn\""), Balance::LeastConn);
    assert_eq!(policy("balance = \"p2c_ewma\""), Balance::P2cEwma);
    assert_eq!(
        policy("balance = \"consistent_hash\""),
        Balance::ConsistentHash(HashKey::ClientIp)
    );
    assert_eq!(
        policy("balance = \"consistent_hash\"\nhash_key = \"header:X-User\""),
        Balance::ConsistentHash(HashKey::Header("x-user".into()))
    );
    assert_eq!(
        policy("balance = \"consistent_hash\"\nhash_key = \"path\""),
        Balance::ConsistentHash(HashKey::Path)
    );
    // Weight 1 is every target's weight: allowed with any policy.
    let config = parse(&upstream(
        "targets = [{ addr = \"127.0.0.1:1\", weight = 1 }]",
    ));
    assert_eq!(config.upstreams[0].weights, [1]);
}

#[test]
fn sections_as_tables() {
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\
         [upstreams.api]\ntargets = [\"127.0.0.1:9001\"]\n\
         [upstreams.api.health]\npath = \"/up\"\n\
         [upstreams.api.retries]\nattempts = 4\non = [\"5xx\"]\n",
    );
    let api = &config.upstreams[0];
    assert_eq!(api.health.as_ref().map(|h| h.path.as_str()), Some("/up"));
    let retries = api.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 4);
    assert_eq!(retries.on.statuses, (500..=599).collect::<Vec<u16>>());
    assert!(!retries.on.connect_failure);
}

#[test]
fn balance_rejections() {
    let t = "targets = [\"127.0.0.1:1\"]\n";
    assert_rejects(
        &upstream(&format!("{t}balance = \"random\"")),
        5,
        11,
        "upstreams.api.balance",
        "unknown policy `random`",
    );
    assert_rejects(
        &upstream(&format!("{t}hash_key = \"path\"")),
        5,
        12,
        "upstreams.api.hash_key",
        "only applies with balance = \"consistent_hash\"",
    );
    assert_rejects(
        &upstream(&format!(
            "{t}balance = \"consistent_hash\"\nhash_key = \"cookie\""
        )),
        6,
        12,
        "upstreams.api.hash_key",
        "must be \"client_ip\", \"header:NAME\" or \"path\"",
    );
    assert_rejects(
        &upstream(&format!(
            "{t}balance = \"consistent_hash\"\nhash_key = \"header:\""
        )),
        6,
        12,
        "upstreams.api.hash_key",
        "header:NAME",
    );
}

#[test]
fn target_rejections() {
    assert_rejects(
        &upstream("targets = [\"127.0.0.1:1\", { addr = \"nowhere\" }]"),
        4,
        27,
        "upstreams.api.targets[1]",
        "`nowhere` is not an IP:port address",
    );
    assert_rejects(
        &upstream("targets = [{ weight = 2 }]\nbalance = \"weighted\""),
        4,
        12,
        "upstreams.api.targets[0]",
        "needs `addr = \"IP:port\"`",
    );
    assert_rejects(
        &upstream("targets = [{ addr = \"127.0.0.1:1\", weight = 0 }]\nbalance = \"weighted\""),
        4,
        12,
        "upstreams.api.targets[0].weight",
        "between 1 and 10000",
    );
    assert_rejects(
        &upstream("targets = [{ addr = \"127.0.0.1:1\", weight = 2 }]"),
        4,
        12,
        "upstreams.api.targets[0].weight",
        "only applies with balance = \"weighted\"",
    );
    assert_rejects(
        &upstream("targets = [{ addr = \"127.0.0.1:1\", port = 2 }]"),
        4,
        12,
        "upstreams.api.targets[0].port",
        "unknown key",
    );
    assert_rejects(
        &upstream("targets = [\"127.0.0.1:1\", 8080]"),
        4,
        27,
        "upstreams.api.targets[1]",
        "invalid type: found integer",
    );
}

#[test]
fn timeout_and_health_rejections() {
    let t = "targets = [\"127.0.0.1:1\"]\n";
    assert_rejects(
        &upstream(&format!("{t}timeout = \"0s\"")),
        5,
        11,
        "upstreams.api.timeout",
        "longer than zero",
    );
    assert_rejects(
        &upstream(&format!("{t}timeout = 5")),
        5,
        11,
        "upstreams.api.timeout",
        "needs a unit",
    );
    assert_rejects(
        &upstream(&format!("{t}health = {{ path = \"healthz\" }}")),
        5,
        19,
        "upstreams.api.health.path",
        "must start with '/'",
    );
    assert_rejects(
        &upstream(&format!("{t}health = {{ interval = \"0ms\" }}")),
        5,
        23,
        "upstreams.api.health.interval",
        "longer than zero",
    );
    assert_rejects(
        &upstream(&format!("{t}health = {{ healthy = 0 }}")),
        5,
        22,
        "upstreams.api.health.healthy",
        "between 1 and 1000",
    );
    for bad in ["\"600\"", "\"399-200\"", "\"2xx\"", "true"] {
        assert_rejects(
            &upstream(&format!("{t}health = {{ expect_status = {bad} }}")),
            5,
            28,
            "upstreams.api.health.expect_status",
            "\"200-399\"",
        );
    }
    assert_rejects(
        &upstream(&format!("{t}health = {{ every = \"1s\" }}")),
        5,
        12,
        "upstreams.api.health.every",
        "unknown field `every`",
    );
}

#[test]
fn outlier_breaker_and_retries_rejections() {
    let t = "targets = [\"127.0.0.1:1\"]\n";
    assert_rejects(
        &upstream(&format!("{t}outlier = {{ max_ejected_percent = 101 }}")),
        5,
        35,
        "upstreams.api.outlier.max_ejected_percent",
        "between 0 and 100",
    );
    assert_rejects(
        &upstream(&format!(
            "{t}outlier = {{ base_ejection = \"1m\", max_ejection = \"10s\" }}"
        )),
        5,
        50,
        "upstreams.api.outlier.max_ejection",
        "at least base_ejection",
    );
    assert_rejects(
        &upstream(&format!("{t}outlier = {{ consecutive_failures = 0 }}")),
        5,
        36,
        "upstreams.api.outlier.consecutive_failures",
        "between 1 and 1000",
    );
    assert_rejects(
        &upstream(&format!(
            "{t}breaker = {{ max_requests = 10, max_pending = 5 }}"
        )),
        5,
        46,
        "upstreams.api.breaker.max_pending",
        "only applies with max_connections",
    );
    assert_rejects(
        &upstream(&format!("{t}breaker = {{ max_connections = 0 }}")),
        5,
        31,
        "upstreams.api.breaker.max_connections",
        "between 1 and",
    );
    // An empty table has no key to point at: the upstream's name is the place.
    assert_rejects(
        &upstream(&format!("{t}breaker = {{}}")),
        3,
        12,
        "upstreams.api.breaker",
        "needs max_connections or max_requests",
    );
    assert_rejects(
        &upstream(&format!("{t}retries = {{ attempts = 0 }}")),
        5,
        24,
        "upstreams.api.retries.attempts",
        "between 1 and 10",
    );
    assert_rejects(
        &upstream(&format!(
            "{t}retries = {{ on = [\"reset\", \"sometimes\"] }}"
        )),
        5,
        28,
        "upstreams.api.retries.on[1]",
        "\"connect-failure\", \"reset\", \"timeout\"",
    );
    assert_rejects(
        &upstream(&format!("{t}retries = {{ on = [\"404\"] }}")),
        5,
        19,
        "upstreams.api.retries.on[0]",
        "from \"500\" to \"599\"",
    );
    assert_rejects(
        &upstream(&format!("{t}retries = {{ on = [] }}")),
        5,
        18,
        "upstreams.api.retries.on",
        "at least one condition",
    );
    for bad in ["20", "101%", "12.55%", "-5%", "x%"] {
        assert_rejects(
            &upstream(&format!("{t}retries = {{ budget = \"{bad}\" }}")),
            5,
            22,
            "upstreams.api.retries.budget",
            "\"20%\"",
        );
    }
    assert_rejects(
        &upstream(&format!("{t}retries = {{ per_try_timeout = \"0s\" }}")),
        5,
        31,
        "upstreams.api.retries.per_try_timeout",
        "longer than zero",
    );
}

#[test]
fn builtin_upstreams_take_none_of_it() {
    // Each is placed at its first value.
    for (key, line, column) in [
        ("retries", "retries = { attempts = 2 }", 24),
        ("health", "health = { path = \"/\" }", 19),
        ("breaker", "breaker = { max_requests = 1 }", 28),
        ("outlier", "outlier = { consecutive_failures = 2 }", 36),
        ("timeout", "timeout = \"1s\"", 11),
        ("balance", "balance = \"least_conn\"", 11),
    ] {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n[upstreams.echo]\nbuiltin = \"echo\"\n{line}\n"
        );
        assert_rejects(
            &text,
            5,
            column,
            &format!("upstreams.echo.{key}"),
            "only applies to upstreams with `targets`",
        );
    }
}
