//! The shard's memory: stored responses in a slab, one variants record per URL, and S3-FIFO
//! eviction under a byte budget. It knows nothing of HTTP; `mod.rs` decides what goes in.
//!
//! S3-FIFO (Yang et al., SOSP '23): new entries enter a small FIFO (a tenth of the budget);
//! one that was hit while there moves to the main FIFO when it reaches the tail, one that was
//! not is dropped and its identity kept in a ghost FIFO, so that if it comes back it goes
//! straight to main. Main's tail is reinserted while its hit counter (0..=3) is non-zero.
//! Chosen over LRU because a hit only bumps a counter (no list surgery on the hot path), and
//! because a scan of one-time URLs (a crawler, a cache-busting client) passes through the
//! small queue without flushing the hot set, which LRU cannot avoid.
//!
//! Both queues are intrusive doubly linked lists over slab indices, so nothing allocates per
//! lookup and any entry can be unlinked in O(1) (expiry, purge, a replaced variant).

use std::collections::VecDeque;
use std::mem::size_of;
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;

use crate::http::Span;

/// No entry: the end of a list.
const NIL: u32 = u32::MAX;

/// At most this many variants per URL, so that a client inventing `Accept-Encoding` values
/// cannot make a lookup scan grow without bound; the oldest variant makes room.
const MAX_VARIANTS: usize = 16;

/// The highest hit count S3-FIFO keeps: three reinsertions at main's tail at most.
const MAX_FREQ: u8 = 3;

/// What a `Bytes` costs beyond its data: the shared header the bytes crate allocates for it.
const BYTES_HEADER: usize = 32;

/// A ghost record: its id in the FIFO and in the set (with the set's control byte and slack).
const GHOST_RECORD: usize = 3 * size_of::<u64>();

/// What an entry costs beyond its bytes: its slot, the headers of its two `Bytes`, its index
/// in its URL's variant list and in the free list, and the ghost record it may leave behind
/// (the ghost never holds more records than there are entries, so charging it here bounds it).
const ENTRY_OVERHEAD: usize =
    size_of::<Option<Slot>>() + 2 * BYTES_HEADER + 2 * size_of::<u32>() + GHOST_RECORD;

/// What a URL record costs beyond its bytes: the record, its map key and control byte, and
/// the allocator headers of its boxes.
const URL_OVERHEAD: usize = size_of::<Url>() + size_of::<u64>() + 3 * 16;

/// A stored response and what `lookup` needs to answer from it.
#[derive(Debug)]
pub(super) struct Entry {
    /// The URL record this is a variant of.
    pub url: u64,
    /// Hash of `vary_values`, checked before the bytes are compared.
    pub variant: u64,
    /// The request's values of the fields the URL's Vary names, as `key::vary_stream` writes.
    pub vary_values: Box<[u8]>,
    /// Status line and the fields kept, each ending in CRLF; no empty line.
    pub head: Bytes,
    /// Where the field lines start in `head` (after the status line).
    pub fields_at: usize,
    pub body: Bytes,
    /// The ETag value in `head`, empty if none.
    pub etag: Span,
    /// Last-Modified (or else Date), seconds since the Unix epoch.
    pub modified: Option<i64>,
    pub response_time: Instant,
    /// RFC 9111 §4.2.3 `corrected_initial_age`.
    pub initial_age: Duration,
    pub expires: Instant,
}

impl Entry {
    /// Bytes this entry holds in the budget.
    fn charge(&self) -> usize {
        self.head.len() + self.body.len() + self.vary_values.len() + ENTRY_OVERHEAD
    }

    /// Its id in the ghost FIFO: URL and variant together.
    fn ghost_id(&self) -> u64 {
        self.url.rotate_left(32) ^ self.variant
    }
}

/// A URL's variants record: what a lookup needs before it can compute a variant's key.
#[derive(Debug)]
pub(super) struct Url {
    /// The URL identity as `key::url_stream` writes it, to rule out hash collisions.
    pub id: Box<[u8]>,
    /// The lowercased field names of the response's Vary, comma-separated.
    pub vary: Box<[u8]>,
    /// Slab indices of the stored variants, oldest first.
    pub variants: Vec<u32>,
}

impl Url {
    fn charge(&self) -> usize {
        self.id.len() + self.vary.len() + URL_OVERHEAD
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    charge: usize,
    freq: u8,
    queue: Queue,
    prev: u32,
    next: u32,
}

/// A FIFO: `head` is the newest entry, `tail` the next to leave.
#[derive(Debug)]
struct List {
    head: u32,
    tail: u32,
    bytes: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        bytes: 0,
    };
}

/// Identities of entries dropped from the small queue without a hit, oldest first. The set
/// answers membership; an id taken out of the set may linger in the FIFO until it leaves.
#[derive(Debug, Default)]
struct Ghost {
    order: VecDeque<u64>,
    set: AHashSet<u64>,
}

impl Ghost {
    fn remember(&mut self, id: u64, cap: usize) {
        if self.set.insert(id) {
            self.order.push_back(id);
        }
        self.trim(cap);
    }

    fn trim(&mut self, cap: usize) {
        while self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn take(&mut self, id: u64) -> bool {
        self.set.remove(&id)
    }
}

#[derive(Debug)]
pub(super) struct Store {
    memory: usize,
    urls: AHashMap<u64, Url>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    small: List,
    main: List,
    ghost: Ghost,
    bytes: usize,
    entries: usize,
    pub evictions: u64,
    pub expired: u64,
}

impl Store {
    pub fn new(memory: usize) -> Store {
        Store {
            memory,
            urls: AHashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            small: List::EMPTY,
            main: List::EMPTY,
            ghost: Ghost::default(),
            bytes: 0,
            entries: 0,
            evictions: 0,
            expired: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn url(&self, url: u64) -> Option<&Url> {
        self.urls.get(&url)
    }

    pub fn entry(&self, i: u32) -> Option<&Entry> {
        self.slot(i).map(|s| &s.entry)
    }

    /// A hit: S3-FIFO only counts it.
    pub fn touch(&mut self, i: u32) {
        if let Some(s) = self.slot_mut(i) {
            s.freq = (s.freq + 1).min(MAX_FREQ);
        }
    }

    /// Drops an entry found stale by a lookup.
    pub fn expire(&mut self, i: u32) {
        if self.remove(i).is_some() {
            self.expired += 1;
        }
    }

    /// Removes every variant of a URL; returns how many there were.
    pub fn remove_url(&mut self, url: u64) -> usize {
        let mut removed = 0;
        while let Some(&i) = self.urls.get(&url).and_then(|u| u.variants.first()) {
            if self.remove(i).is_none() {
                // A dangling index would loop forever; drop the record instead.
                self.urls.remove(&url);
                break;
            }
            removed += 1;
        }
        removed
    }

    /// Stores `entry` as a variant of the URL `id` whose responses vary on `vary`, replacing a
    /// variant with the same request values, or every variant if the URL's Vary changed. Then
    /// evicts down to the budget. False if the entry alone cannot fit.
    pub fn insert(&mut self, id: Box<[u8]>, vary: Box<[u8]>, entry: Entry, now: Instant) -> bool {
        let charge = entry.charge();
        let record = Url {
            id,
            vary,
            variants: Vec::new(),
        };
        if charge.saturating_add(record.charge()) > self.memory || self.slots.len() >= NIL as usize
        {
            return false;
        }
        let url = entry.url;
        match self.urls.get(&url) {
            Some(old) if old.id == record.id && old.vary == record.vary => {
                let same = old.variants.iter().copied().find(|&i| {
                    self.entry(i)
                        .is_some_and(|e| e.vary_values == entry.vary_values)
                });
                let full = old.variants.len() >= MAX_VARIANTS;
                if let Some(i) = same.or(full.then(|| old.variants.first().copied()).flatten()) {
                    self.remove(i);
                }
            }
            // Another Vary (or, with odds of 2^-64, another URL): the old variants could no
            // longer be found by the new record's field names.
            Some(_) => {
                self.remove_url(url);
            }
            None => {}
        }
        let queue = if self.ghost.take(entry.ghost_id()) {
            Queue::Main
        } else {
            Queue::Small
        };
        let slot = Slot {
            entry,
            charge,
            freq: 0,
            queue,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(free) = self.slots.get_mut(i as usize) {
                    *free = Some(slot);
                }
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        let record = self.urls.entry(url).or_insert_with(|| {
            self.bytes += record.charge();
            record
        });
        record.variants.push(i);
        self.bytes += charge;
        self.entries += 1;
        self.push_head(queue, i);
        self.evict(i, now);
        true
    }

    /// Evicts until the budget holds, never choosing `fresh` (the entry just inserted) while
    /// another candidate exists: a large newcomer would otherwise sit alone at the small
    /// queue's tail and leave at once.
    fn evict(&mut self, fresh: u32, now: Instant) {
        while self.bytes > self.memory {
            let small_first = self.small.bytes > self.memory / 10 || self.main.tail == NIL;
            let (mut queue, other) = if small_first {
                (Queue::Small, Queue::Main)
            } else {
                (Queue::Main, Queue::Small)
            };
            let mut i = self.list(queue).tail;
            if i == fresh && self.list(other).tail != NIL {
                queue = other;
                i = self.list(other).tail;
            }
            let Some(slot) = self.slot(i) else {
                // Nothing left to evict; cannot happen while bytes > 0, but never spin.
                break;
            };
            let (freq, stale, ghost) =
                (slot.freq, slot.entry.expires <= now, slot.entry.ghost_id());
            if stale {
                self.expire(i);
            } else if freq > 0 {
                // Small's survivors move to main with a fresh count; main's go round again
                // with one hit spent.
                self.unlink(i);
                if let Some(s) = self.slot_mut(i) {
                    s.freq = if queue == Queue::Small { 0 } else { freq - 1 };
                }
                self.push_head(Queue::Main, i);
            } else {
                self.remove(i);
                self.evictions += 1;
                if queue == Queue::Small {
                    self.ghost.remember(ghost, self.entries);
                }
            }
        }
    }

    fn remove(&mut self, i: u32) -> Option<Entry> {
        self.unlink(i);
        let slot = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        self.bytes -= slot.charge;
        self.entries -= 1;
        let url = slot.entry.url;
        if let Some(record) = self.urls.get_mut(&url) {
            record.variants.retain(|&v| v != i);
            if record.variants.is_empty() {
                let charge = record.charge();
                self.urls.remove(&url);
                self.bytes -= charge;
            }
        }
        self.ghost.trim(self.entries);
        Some(slot.entry)
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)?.as_ref()
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    fn list(&self, q: Queue) -> &List {
        match q {
            Queue::Small => &self.small,
            Queue::Main => &self.main,
        }
    }

    fn list_mut(&mut self, q: Queue) -> &mut List {
        match q {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
        }
    }

    fn push_head(&mut self, q: Queue, i: u32) {
        let head = self.list(q).head;
        let Some(s) = self.slot_mut(i) else { return };
        s.queue = q;
        s.prev = NIL;
        s.next = head;
        let charge = s.charge;
        match self.slot_mut(head) {
            Some(h) => h.prev = i,
            None => self.list_mut(q).tail = i,
        }
        let list = self.list_mut(q);
        list.head = i;
        list.bytes += charge;
    }

    fn unlink(&mut self, i: u32) {
        let Some(s) = self.slot(i) else { return };
        let (prev, next, q, charge) = (s.prev, s.next, s.queue, s.charge);
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.list_mut(q).head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.list_mut(q).tail = prev,
        }
        if let Some(s) = self.slot_mut(i) {
            s.prev = NIL;
            s.next = NIL;
        }
        self.list_mut(q).bytes -= charge;
    }
}
