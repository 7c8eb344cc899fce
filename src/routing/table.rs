//! The immutable route table: built once per configuration from its routes, then asked, per
//! request, which route a (Host, path, method) takes.
//!
//! Precedence: routes for the exact Host, then those for the matching `*.suffix` wildcards from
//! the longest suffix down, then host-less routes. Within one of those groups the longest
//! `path_prefix` that the path starts with and whose `methods` allow the method wins; when no
//! route of a group does, the next group is asked, so a host's routes extend the host-less ones
//! rather than hiding them.
//!
//! A lookup allocates nothing and costs at most a hash probe per label of the Host plus one walk
//! down a radix trie no deeper than the path, however many routes there are.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{HostMatch, Route};

/// Room for the longest DNS name (253 bytes) plus slack; a longer Host is no name any host
/// route could be written for, so it gets host-less routes only.
const HOST_BUF: usize = 256;

/// Marks a trie node with no ancestor that ends a prefix.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Keyed by the lowercase host name.
    exact: HostGroups,
    /// Keyed by the suffix with its leading dot, `.example.com` for `*.example.com`.
    wildcard: HostGroups,
    any: PrefixTrie,
}

impl RouteTable {
    /// Compiles `routes`; [`RouteTable::find`] answers with indices into this slice. Routes the
    /// config validator would reject as duplicates are not an error here: the first one wins.
    pub fn new(routes: &[Route]) -> RouteTable {
        let mut any = TrieBuilder::new();
        let mut exact: HashMap<Box<[u8]>, TrieBuilder> = HashMap::new();
        let mut wildcard: HashMap<Box<[u8]>, TrieBuilder> = HashMap::new();
        for (index, route) in routes.iter().enumerate() {
            let trie = match &route.host {
                HostMatch::Any => &mut any,
                HostMatch::Exact(host) => exact
                    .entry(lowercase(host))
                    .or_insert_with(TrieBuilder::new),
                HostMatch::Suffix(suffix) => wildcard
                    .entry(lowercase(suffix))
                    .or_insert_with(TrieBuilder::new),
            };
            let methods = route
                .methods
                .as_ref()
                .map(|methods| methods.iter().map(|m| m.as_bytes().into()).collect());
            trie.insert(
                route.path_prefix.as_bytes(),
                Candidate {
                    methods,
                    route: index,
                },
            );
        }
        RouteTable {
            exact: HostGroups::new(exact),
            wildcard: HostGroups::new(wildcard),
            any: any.build(),
        }
    }

    /// The index of the route for a request, or `None` (404). `host` is the Host header or the
    /// authority of an absolute-form target, with or without port; `path` is the path without
    /// the query; `method` is compared exactly (methods are case-sensitive, RFC 9110 §9.1).
    pub fn find(&self, host: &[u8], path: &[u8], method: &[u8]) -> Option<usize> {
        if !(self.exact.is_empty() && self.wildcard.is_empty()) {
            let mut buf = [0u8; HOST_BUF];
            if let Some(name) = host_name(host, &mut buf) {
                if let Some(route) = self.exact.get(name).and_then(|t| t.find(path, method)) {
                    return Some(route);
                }
                // Leftmost dot first: the longest suffix is the most specific wildcard. A dot at
                // 0 is skipped: "*." needs a label in front of the suffix.
                for (i, _) in name.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'.') {
                    let found = name
                        .get(i..)
                        .and_then(|suffix| self.wildcard.get(suffix))
                        .and_then(|t| t.find(path, method));
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        self.any.find(path, method)
    }
}

/// Host groups by name (or wildcard suffix), with the set of name lengths present so that a
/// lookup skips hashing a name or suffix that no key could equal: with a few wildcards, most
/// suffixes of a Host are skipped that way.
#[derive(Debug, Clone)]
struct HostGroups {
    map: HashMap<Box<[u8]>, PrefixTrie, BuildHasherDefault<HostHasher>>,
    /// Bit `n` is set when a key is `n` bytes long; names looked up are shorter than
    /// [`HOST_BUF`], so longer keys need no bit (they cannot match).
    lengths: [u64; HOST_BUF / 64],
}

impl HostGroups {
    fn new(builders: HashMap<Box<[u8]>, TrieBuilder>) -> HostGroups {
        let mut lengths = [0u64; HOST_BUF / 64];
        for key in builders.keys() {
            if let Some(word) = lengths.get_mut(key.len() / 64) {
                *word |= 1 << (key.len() % 64);
            }
        }
        let map = builders
            .into_iter()
            .map(|(key, builder)| (key, builder.build()))
            .collect();
        HostGroups { map, lengths }
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn get(&self, name: &[u8]) -> Option<&PrefixTrie> {
        let word = self.lengths.get(name.len() / 64)?;
        if word & (1 << (name.len() % 64)) == 0 {
            return None;
        }
        self.map.get(name)
    }
}

fn lowercase(name: &str) -> Box<[u8]> {
    name.as_bytes().to_ascii_lowercase().into()
}

/// The lowercase name in a Host value, written into `buf`: without the port (`a.example:8080`,
/// `[::1]:8080`) and without a trailing dot (`a.example.` names the same host). `None` when
/// it does not fit `buf` with a byte to spare.
fn host_name<'b>(host: &[u8], buf: &'b mut [u8; HOST_BUF]) -> Option<&'b [u8]> {
    let name = match host.first() {
        // An IPv6 literal holds colons; the port can only follow its closing bracket.
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => host.get(..=end).unwrap_or(host),
            None => host,
        },
        _ => host.split(|&b| b == b':').next().unwrap_or(host),
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.len() >= HOST_BUF {
        return None;
    }
    let out = buf.get_mut(..name.len())?;
    for (o, &b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// The routes of one host group, by path prefix: a radix trie (runs of bytes without a branch
/// or a route share one node) where each node that ends a prefix holds its routes, and every
/// node links to its nearest ancestor that does. A lookup walks down as far as the path goes,
/// then back up those links until a route allows the method: longest prefix first, with no
/// backtracking over bytes.
#[derive(Debug, Clone)]
struct PrefixTrie {
    /// `nodes[0]` is the root (the empty prefix); a child always comes after its parent.
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
struct Node {
    /// The bytes from the parent's prefix to this node's; empty for the root.
    label: Box<[u8]>,
    /// Children by the first byte of their label, sorted by it.
    edges: Vec<(u8, u32)>,
    /// Routes whose prefix ends here: one for any method, or several whose method sets are
    /// disjoint (the validator rejects overlaps; otherwise the first in file order wins).
    routes: Vec<Candidate>,
    /// The nearest proper ancestor with routes, or [`NONE`].
    up: u32,
}

#[derive(Debug, Clone)]
struct Candidate {
    methods: Option<Box<[Box<[u8]>]>>,
    route: usize,
}

impl Candidate {
    fn allows(&self, method: &[u8]) -> bool {
        match &self.methods {
            Some(methods) => methods.iter().any(|m| **m == *method),
            None => true,
        }
    }
}

impl PrefixTrie {
    fn find(&self, path: &[u8], method: &[u8]) -> Option<usize> {
        let mut at = 0;
        let mut rest = path;
        while let (Some(node), Some(&byte)) = (self.nodes.get(at), rest.first()) {
            let Ok(i) = node.edges.binary_search_by_key(&byte, |&(b, _)| b) else {
                break;
            };
            let child = node.edges[i].1 as usize;
            // A label only partly matched ends the walk: its prefix is not one of the path's.
            match self
                .nodes
                .get(child)
                .and_then(|c| rest.strip_prefix(&*c.label))
            {
                Some(after) => {
                    rest = after;
                    at = child;
                }
                None => break,
            }
        }
        let mut at = match self.nodes.get(at) {
            Some(node) if node.routes.is_empty() => node.up,
            Some(_) => at as u32,
            None => NONE,
        };
        // `NONE` is past the end of `nodes`, which ends the walk.
        while let Some(node) = self.nodes.get(at as usize) {
            if let Some(candidate) = node.routes.iter().find(|c| c.allows(method)) {
                return Some(candidate.route);
            }
            at = node.up;
        }
        None
    }
}

/// A one-byte-per-node trie, simple to insert into; [`TrieBuilder::build`] compresses it.
struct TrieBuilder {
    /// `nodes[0]` is the root.
    nodes: Vec<BuilderNode>,
}

#[derive(Default)]
struct BuilderNode {
    /// Children by their byte, sorted by it.
    edges: Vec<(u8, usize)>,
    routes: Vec<Candidate>,
}

impl TrieBuilder {
    fn new() -> TrieBuilder {
        TrieBuilder {
            nodes: vec![BuilderNode::default()],
        }
    }

    fn insert(&mut self, prefix: &[u8], candidate: Candidate) {
        let mut at = 0;
        for &byte in prefix {
            let edges = &self.nodes[at].edges;
            at = match edges.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(i) => edges[i].1,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(BuilderNode::default());
                    self.nodes[at].edges.insert(i, (byte, child));
                    child
                }
            };
        }
        self.nodes[at].routes.push(candidate);
    }

    fn build(mut self) -> PrefixTrie {
        let root = std::mem::take(&mut self.nodes[0]);
        let mut nodes = vec![Node {
            label: Box::default(),
            edges: Vec::with_capacity(root.edges.len()),
            routes: root.routes,
            up: NONE,
        }];
        // (builder node, its trie node) whose children are still to be added.
        let mut pending = vec![(root.edges, 0)];
        while let Some((edges, parent)) = pending.pop() {
            for (byte, child) in edges {
                // A chain of nodes with one child and no routes becomes one label.
                let mut label = vec![byte];
                let mut end = child;
                while let [(next_byte, next)] = self.nodes[end].edges[..] {
                    if !self.nodes[end].routes.is_empty() {
                        break;
                    }
                    label.push(next_byte);
                    end = next;
                }
                let end = std::mem::take(&mut self.nodes[end]);
                let index = nodes.len();
                // Route tables hold thousands of nodes, not billions.
                nodes[parent].edges.push((byte, index as u32));
                nodes.push(Node {
                    label: label.into(),
                    edges: Vec::with_capacity(end.edges.len()),
                    routes: end.routes,
                    up: NONE,
                });
                pending.push((end.edges, index));
            }
        }
        // Parents come before their children, so one forward pass sees each parent's own link
        // before it hands it down. Edges were pushed in the builder's sorted order.
        for parent in 0..nodes.len() {
            let up = if nodes[parent].routes.is_empty() {
                nodes[parent].up
            } else {
                parent as u32
            };
            for i in 0..nodes[parent].edges.len() {
                let child = nodes[parent].edges[i].1 as usize;
                nodes[child].up = up;
            }
        }
        PrefixTrie { nodes }
    }
}

/// rustc's FxHash, a multiply and a rotate per 8 bytes: a few nanoseconds for a host name
/// where the default SipHash takes tens. It is not keyed, which is safe here: clients only
/// look names up and never insert, so they can cost at most the probe sequences that the
/// config's own host names already produce.
#[derive(Debug, Default, Clone, Copy)]
struct HostHasher(u64);

impl HostHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // Zero padding is unambiguous: the length was hashed first (`write_usize`).
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves its best-mixed bits at the top; hashbrown picks buckets with the
        // bottom ones.
        self.0.rotate_left(26)
    }
}
