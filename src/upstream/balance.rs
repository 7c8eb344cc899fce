//! Which target of an upstream gets the next attempt: round robin, smooth weighted round
//! robin, least connections, power of two choices on a latency average, and consistent
//! hashing through a Maglev table.
//!
//! Sans-io and per worker: a [`Balancer`] keeps its own cursor, weights or random state, sees
//! the targets only through [`Candidates`] (which may be picked now, how loaded each is) and
//! answers with an index. A pick allocates nothing and takes no lock; the one shared piece,
//! the [`Maglev`] table, is immutable and built once per configuration off the hot path.

use std::fmt;
use std::sync::Arc;

/// What a balancer may ask about an upstream's targets, by index.
pub trait Candidates {
    /// How many targets there are (indices `0..targets()`).
    fn targets(&self) -> usize;
    /// Whether target `i` may be picked now (healthy, not ejected, not tried yet).
    fn available(&self, i: usize) -> bool;
    /// Requests this worker has in flight to target `i`.
    fn in_flight(&self, i: usize) -> u32;
    /// Moving average of target `i`'s latency in microseconds; 0 before its first sample.
    fn latency_us(&self, i: usize) -> f64;
}

/// One worker's choice state for one upstream.
pub struct Balancer {
    /// Where round robin and least_conn's tie-breaking continue.
    cursor: usize,
    policy: Policy,
}

enum Policy {
    RoundRobin,
    /// Smooth weighted round robin (nginx's): every pick adds each available target's weight
    /// to its `current`, takes the largest, and takes the total off the winner, so a 1:2:3
    /// upstream interleaves (C B C A B C) instead of sending bursts.
    Weighted {
        weights: Vec<i64>,
        current: Vec<i64>,
    },
    LeastConn,
    /// xorshift64* state: the two choices are random, and need not be good randomness.
    P2c {
        rng: u64,
    },
    Hash(Arc<Maglev>),
}

impl Balancer {
    pub fn round_robin() -> Balancer {
        Balancer::with(Policy::RoundRobin)
    }

    /// Targets get picks in proportion to `weights` (one per target).
    pub fn weighted(weights: &[u32]) -> Balancer {
        Balancer::with(Policy::Weighted {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: vec![0; weights.len()],
        })
    }

    pub fn least_conn() -> Balancer {
        Balancer::with(Policy::LeastConn)
    }

    /// `seed` makes each worker's random choices its own (0 is replaced: xorshift would stay 0).
    pub fn p2c_ewma(seed: u64) -> Balancer {
        Balancer::with(Policy::P2c { rng: seed | 1 })
    }

    pub fn consistent_hash(table: Arc<Maglev>) -> Balancer {
        Balancer::with(Policy::Hash(table))
    }

    fn with(policy: Policy) -> Balancer {
        Balancer { cursor: 0, policy }
    }

    /// The target for the next attempt, among the available ones; `key` is the request's
    /// [`key_hash`] (only consistent hashing reads it). `None` when none is available.
    pub fn pick(&mut self, c: &impl Candidates, key: u64) -> Option<usize> {
        let n = c.targets();
        if n == 0 {
            return None;
        }
        match &mut self.policy {
            Policy::RoundRobin => {
                let start = self.cursor % n;
                let i = (0..n).map(|k| (start + k) % n).find(|&i| c.available(i))?;
                self.cursor = i.wrapping_add(1);
                Some(i)
            }
            Policy::Weighted { weights, current } => {
                let mut total = 0i64;
                let mut best: Option<(usize, i64)> = None;
                for i in (0..n).filter(|&i| c.available(i)) {
                    let (Some(w), Some(cur)) = (weights.get(i), current.get_mut(i)) else {
                        continue;
                    };
                    *cur += w;
                    total += w;
                    if best.is_none_or(|(_, top)| *cur > top) {
                        best = Some((i, *cur));
                    }
                }
                let (b, _) = best?;
                if let Some(cur) = current.get_mut(b) {
                    *cur -= total;
                }
                Some(b)
            }
            Policy::LeastConn => {
                let start = self.cursor % n;
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| c.available(i))
                    .min_by_key(|&i| c.in_flight(i))?;
                self.cursor = i.wrapping_add(1);
                Some(i)
            }
            Policy::P2c { rng } => {
                let available = (0..n).filter(|&i| c.available(i)).count();
                match available {
                    0 => None,
                    1 => (0..n).find(|&i| c.available(i)),
                    m => {
                        let first = below(rng, m);
                        // The second of the m - 1 others: skip over the first.
                        let mut second = below(rng, m - 1);
                        if second >= first {
                            second += 1;
                        }
                        let a = nth_available(c, first)?;
                        let b = nth_available(c, second)?;
                        // Latency times load (Finagle's peak EWMA idea, without the peak): a
                        // target never measured costs only its load, so it gets tried.
                        let cost =
                            |i: usize| (c.latency_us(i) + 1.0) * f64::from(c.in_flight(i) + 1);
                        Some(if cost(b) < cost(a) { b } else { a })
                    }
                }
            }
            Policy::Hash(table) => {
                let slot = table.slot(key);
                let i = table.at(slot)?;
                if c.available(i) {
                    return Some(i);
                }
                if !(0..n).any(|i| c.available(i)) {
                    return None;
                }
                // The entries after a key's slot are a stable, pseudo-random sequence of
                // targets: each key's fallback is its own, and the same on every worker.
                (1..table.slots())
                    .filter_map(|k| table.at((slot + k) % table.slots()))
                    .find(|&i| c.available(i))
            }
        }
    }
}

/// The index of the `rank`th available target.
fn nth_available(c: &impl Candidates, rank: usize) -> Option<usize> {
    (0..c.targets()).filter(|&i| c.available(i)).nth(rank)
}

/// A random number below `m`, from the high bits (xorshift's low bits are its weakest):
/// Lemire's multiply-shift, without the rejection step (the bias is below 2^-32 per choice).
fn below(state: &mut u64, m: usize) -> usize {
    (((next_random(state) >> 32) * m as u64) >> 32) as usize
}

fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A stable 64-bit hash of a consistent-hash key (a client address, a header value, a path):
/// the same on every worker and in every run, so a key keeps its target across restarts.
/// FNV-1a, then a 64-bit finaliser so that similar keys spread over the whole table.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// MurmurHash3's fmix64.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Maglev's lookup table size: a prime well above any plausible target count (the table
/// balances to within about N/M of even).
pub const MAGLEV_SIZE: usize = 65_537;

/// A Maglev lookup table (Eisenbud et al., NSDI 2016): each target claims table slots in
/// the order of its own permutation, taking turns, so every target ends up with an almost
/// equal share, and removing one target leaves the others' slots mostly where they were
/// (about 1/N of keys move, those of the removed target, plus a little).
pub struct Maglev {
    /// Target index per slot.
    table: Vec<u32>,
}

impl Maglev {
    /// The table for targets named `names` (their addresses: a target's slots follow its
    /// name, not its position in the list).
    pub fn new<T: AsRef<[u8]>>(names: &[T]) -> Maglev {
        Maglev::with_size(names, MAGLEV_SIZE)
    }

    /// As [`Maglev::new`] with `size` slots; `size` must be prime for the permutations to
    /// cover the table.
    pub fn with_size<T: AsRef<[u8]>>(names: &[T], size: usize) -> Maglev {
        let n = names.len();
        if n == 0 || size < 2 {
            return Maglev { table: Vec::new() };
        }
        let size64 = size as u64;
        let offsets: Vec<u64> = names
            .iter()
            .map(|name| key_hash(name.as_ref()) % size64)
            .collect();
        let skips: Vec<u64> = names
            .iter()
            .map(|name| mix(key_hash(name.as_ref()) ^ 0x9e37_79b9_7f4a_7c15) % (size64 - 1) + 1)
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (Some(&offset), Some(&skip), Some(nexti)) =
                    (offsets.get(i), skips.get(i), next.get_mut(i))
                else {
                    continue;
                };
                loop {
                    let slot = ((offset + *nexti * skip) % size64) as usize;
                    *nexti += 1;
                    match table.get_mut(slot) {
                        Some(entry) if *entry == u32::MAX => {
                            *entry = i as u32;
                            break;
                        }
                        Some(_) => {}
                        // Cannot happen: slot < size.
                        None => break,
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    fn slots(&self) -> usize {
        self.table.len()
    }

    fn slot(&self, key: u64) -> usize {
        (key % self.table.len().max(1) as u64) as usize
    }

    fn at(&self, slot: usize) -> Option<usize> {
        self.table.get(slot).map(|&i| i as usize)
    }

    /// The target index for `key` (a [`key_hash`]).
    pub fn lookup(&self, key: u64) -> Option<usize> {
        self.at(self.slot(key))
    }
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Maglev({} slots)", self.table.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets with fixed loads; `down` ones are unavailable.
    struct Fixed {
        down: Vec<bool>,
        in_flight: Vec<u32>,
        latency: Vec<f64>,
    }

    impl Fixed {
        fn up(n: usize) -> Fixed {
            Fixed {
                down: vec![false; n],
                in_flight: vec![0; n],
                latency: vec![0.0; n],
            }
        }
    }

    impl Candidates for Fixed {
        fn targets(&self) -> usize {
            self.down.len()
        }
        fn available(&self, i: usize) -> bool {
            !self.down[i]
        }
        fn in_flight(&self, i: usize) -> u32 {
            self.in_flight[i]
        }
        fn latency_us(&self, i: usize) -> f64 {
            self.latency[i]
        }
    }

    fn counts(b: &mut Balancer, c: &Fixed, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; c.targets()];
        for k in 0..picks {
            counts[b.pick(c, key_hash(&k.to_le_bytes())).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_cycles_and_skips_unavailable_targets() {
        let mut b = Balancer::round_robin();
        let mut c = Fixed::up(3);
        let seq: Vec<usize> = (0..6).map(|_| b.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
        c.down[1] = true;
        let seq: Vec<usize> = (0..4).map(|_| b.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, [0, 2, 0, 2]);
        c.down = vec![true; 3];
        assert_eq!(b.pick(&c, 0), None);
        assert_eq!(Balancer::round_robin().pick(&Fixed::up(0), 0), None);
    }

    #[test]
    fn weighted_1_2_3_over_6000_picks_is_within_2_percent() {
        let mut b = Balancer::weighted(&[1, 2, 3]);
        let c = Fixed::up(3);
        let got = counts(&mut b, &c, 6000);
        for (count, share) in got.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            let measured = *count as f64 / 6000.0;
            assert!((measured - share).abs() <= 0.02, "{got:?}");
        }
        // Smooth: one period of six interleaves instead of sending a burst to the heaviest.
        let mut b = Balancer::weighted(&[1, 2, 3]);
        let period: Vec<usize> = (0..6).map(|_| b.pick(&c, 0).unwrap()).collect();
        assert_eq!(period, [2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn weighted_shares_an_unavailable_targets_picks_by_weight() {
        let mut b = Balancer::weighted(&[1, 2, 3]);
        let mut c = Fixed::up(3);
        c.down[2] = true;
        let got = counts(&mut b, &c, 3000);
        assert_eq!(got, [1000, 2000, 0]);
    }

    #[test]
    fn least_conn_takes_the_least_loaded_and_rotates_ties() {
        let mut b = Balancer::least_conn();
        let mut c = Fixed::up(3);
        c.in_flight = vec![4, 1, 3];
        assert_eq!(b.pick(&c, 0), Some(1));
        c.in_flight = vec![0, 0, 0];
        let seq: Vec<usize> = (0..3).map(|_| b.pick(&c, 0).unwrap()).collect();
        assert_eq!(seq, [2, 0, 1], "ties continue after the last pick");
        c.in_flight = vec![5, 9, 0];
        c.down[2] = true;
        assert_eq!(b.pick(&c, 0), Some(0));
    }

    #[test]
    fn p2c_ewma_avoids_the_slow_target_and_weighs_load() {
        let mut b = Balancer::p2c_ewma(42);
        let mut c = Fixed::up(3);
        c.latency = vec![1_000.0, 1_000.0, 200_000.0];
        let got = counts(&mut b, &c, 3000);
        // The slow one loses every pairing at equal load.
        assert_eq!(got[2], 0, "{got:?}");
        assert!(got[0] > 1200 && got[1] > 1200, "{got:?}");
        // Load counts too: a fast target with 50 requests in flight loses to the idle fast
        // one (and still beats the idle slow one), so it wins one pairing in three.
        c.in_flight = vec![50, 0, 0];
        let got = counts(&mut b, &c, 3000);
        assert_eq!(got[2], 0, "{got:?}");
        assert!((got[0] as f64 / 3000.0 - 1.0 / 3.0).abs() < 0.03, "{got:?}");
        // One available target is the answer; none is none.
        c.down = vec![true, false, true];
        assert_eq!(b.pick(&c, 0), Some(1));
        c.down[1] = true;
        assert_eq!(b.pick(&c, 0), None);
    }

    #[test]
    fn maglev_spreads_slots_evenly() {
        let names: Vec<String> = (0..7).map(|i| format!("10.0.0.{i}:80")).collect();
        let table = Maglev::new(&names);
        let mut per = [0usize; 7];
        for slot in 0..table.slots() {
            per[table.at(slot).unwrap()] += 1;
        }
        let even = MAGLEV_SIZE as f64 / 7.0;
        for n in per {
            assert!((n as f64 - even).abs() / even < 0.02, "{per:?}");
        }
    }

    /// Removing one of N targets moves at most 1/N + 5% of 10,000 keys (the removed target's
    /// share must move; Maglev moves a little more).
    #[test]
    fn maglev_moves_about_one_nth_of_keys_when_a_target_goes() {
        for n in [3usize, 5, 10] {
            let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8080")).collect();
            let before = Maglev::new(&names);
            let removed = n / 2;
            let kept: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, s)| s.clone())
                .collect();
            let after = Maglev::new(&kept);
            let mut moved = 0;
            for k in 0..10_000u32 {
                let key = key_hash(format!("user-{k}").as_bytes());
                let was = &names[before.lookup(key).unwrap()];
                let now = &kept[after.lookup(key).unwrap()];
                if was != now {
                    moved += 1;
                }
            }
            let bound = 10_000.0 * (1.0 / n as f64 + 0.05);
            println!(
                "maglev: {n} targets, one removed: {moved} of 10000 keys moved (bound {bound:.0})"
            );
            assert!(f64::from(moved) <= bound, "{n} targets: {moved} keys moved");
        }
    }

    #[test]
    fn consistent_hash_is_stable_per_key_and_falls_back_stably() {
        let names = ["a:1", "b:2", "c:3"];
        let table = Arc::new(Maglev::new(&names));
        let mut b = Balancer::consistent_hash(Arc::clone(&table));
        let mut c = Fixed::up(3);
        let key = key_hash(b"user-7");
        let first = b.pick(&c, key).unwrap();
        for _ in 0..10 {
            assert_eq!(b.pick(&c, key), Some(first));
        }
        // Its target down: one other target, the same every time and on a fresh balancer.
        c.down[first] = true;
        let fallback = b.pick(&c, key).unwrap();
        assert_ne!(fallback, first);
        let mut other = Balancer::consistent_hash(table);
        assert_eq!(other.pick(&c, key), Some(fallback));
        c.down = vec![true; 3];
        assert_eq!(b.pick(&c, key), None);
    }

    #[test]
    fn key_hash_is_fixed() {
        // Fixed across runs and machines: the table and keys must agree between workers and
        // after a restart.
        assert_eq!(key_hash(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_ne!(key_hash(b"a"), key_hash(b"b"));
    }
}
