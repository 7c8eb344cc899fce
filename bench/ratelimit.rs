//! `cargo bench --bench ratelimit`: one worker's rate-limit shard deciding a request — for a
//! key it knows (the common case), and for a new key when the shard is full and must forget
//! its least recently used one.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::ratelimit::Limiter;

fn bench(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255).into_bytes())
        .collect();
    let mut limiter = Limiter::new(1_000_000, Duration::from_secs(1), 1_000, 10_000, 1);
    let now = Instant::now();
    for key in &keys {
        limiter.check(key, now);
    }
    let mut i = 0;
    c.bench_function("ratelimit/known_key", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(black_box(&keys[i]), now))
        })
    });
    let mut n = 0u64;
    c.bench_function("ratelimit/new_key_evicts", |b| {
        b.iter(|| {
            n += 1;
            black_box(limiter.check(black_box(&n.to_le_bytes()), now))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
