//! `cargo bench --bench upstream_pick`: one worker choosing the target for an attempt, per
//! balancing policy, over three targets; and the round-robin cursor it replaced (a map from
//! upstream name to cursor), the cost a default upstream used to pay.

use std::cell::RefCell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::config;
use ringgate::upstream::balance::key_hash;
use ringgate::upstream::state::{Shared, Tried, UpstreamState};

fn state(upstream: &str) -> std::rc::Rc<UpstreamState> {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n[upstreams.api]\n\
         targets = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]\n{upstream}\n"
    );
    let config = match config::parse(&text, "bench.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let shared = Shared::build(&config, None);
    let mut all = UpstreamState::build_all(&config, &shared, &[], 7, Instant::now());
    all.pop().expect("one upstream")
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    for (name, upstream) in [
        ("round_robin", ""),
        ("round_robin_health_outlier", "health = {}\noutlier = {}"),
        ("weighted", "balance = \"weighted\""),
        ("least_conn", "balance = \"least_conn\""),
        ("p2c_ewma", "balance = \"p2c_ewma\""),
        ("consistent_hash", "balance = \"consistent_hash\""),
    ] {
        let s = state(upstream);
        let key = key_hash(b"10.1.2.3");
        c.bench_function(&format!("upstream_pick/{name}"), |b| {
            b.iter(|| black_box(s.pick(black_box(key), Tried::default(), now)))
        });
    }
    // What a default upstream did before: the cursor looked up by the upstream's name.
    let cursors: RefCell<ahash::AHashMap<String, usize>> = RefCell::default();
    let targets: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p)))
        .collect();
    c.bench_function("upstream_pick/previous_round_robin_by_name", |b| {
        b.iter(|| {
            let mut cursors = cursors.borrow_mut();
            let i = match cursors.get_mut(black_box("api")) {
                Some(i) => i,
                None => cursors.entry("api".to_owned()).or_default(),
            };
            let target = targets.get(*i % targets.len()).copied();
            *i = i.wrapping_add(1);
            black_box(target)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
