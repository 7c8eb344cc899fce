//! Access decisions: who may reach the gateway and each route (client address), what a browser
//! page may do cross-origin (CORS), who the caller is (API key or JWT), and which headers a
//! route adds or removes.
//!
//! Sans-io like the other leaves: this module never imports monoio and never touches a socket.
//! Policies are built once, at config load (key files are read then, so a reload re-reads
//! them), and are immutable afterwards; a request hands in bytes (header values), addresses
//! and `now`, and gets back a decision plus `Name: value\r\n` lines appended to a buffer the
//! caller owns and reuses. The only mutable state is a worker's [`jwt::JwtCache`].
//!
//! The order the proxy applies them in, and why:
//!
//! 1. [`ip`]: the global filter (`server.ip_allow` / `ip_deny`) on accept or admit, then the
//!    route's [`RoutePolicy::ip`] once routed; 403. First, because it is the cheapest and says
//!    the most: nothing else is worth doing for a refused address.
//! 2. [`cors`]: a preflight on a route with [`RoutePolicy::cors`] is answered here (204 or 403)
//!    and never reaches auth or the upstream: browsers send preflights without credentials.
//! 3. [`Auth::check`]: 401 (with `WWW-Authenticate`) or 403; on success, forwarded identity
//!    headers are appended for the upstream request.
//! 4. [`headers`]: when writing the upstream request, client headers for which
//!    [`RoutePolicy::drops_request_header`] holds are left out, then the route's `set` lines and
//!    the auth lines are appended; on the response, [`RoutePolicy::response_headers`] and
//!    [`cors::CorsPolicy::response_headers`] likewise.

pub mod apikey;
pub mod cors;
pub mod headers;
pub mod ip;
pub mod jwt;

use serde::Serialize;

pub use apikey::{hash_key, ApiKeyAuth, KeySet};
pub use cors::{CorsPolicy, CorsRequest, Preflight};
pub use headers::HeaderEdits;
pub use ip::{CidrSet, IpFilter};
pub use jwt::{JwtCache, JwtPolicy};

/// Appends `Name: value\r\n`.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why authentication failed; for logs and metrics (never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credentials in the request.
    Missing,
    /// An API key that is not in the key file, or a JWT `kid` not in the key set.
    UnknownKey,
    /// Not a token: bad encoding, bad JSON, unsupported or `none` algorithm.
    Malformed,
    /// The token's algorithm is not one the route accepts (or its key can check).
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// A required claim is missing or malformed, or cannot be forwarded as a header.
    Claims,
    /// A valid token without the required scopes (403).
    Scope,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing credentials",
            Reason::UnknownKey => "unknown key",
            Reason::Malformed => "malformed token",
            Reason::Algorithm => "algorithm not allowed",
            Reason::Signature => "bad signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not yet valid",
            Reason::Issuer => "wrong issuer",
            Reason::Audience => "wrong audience",
            Reason::Claims => "bad claims",
            Reason::Scope => "insufficient scope",
        }
    }
}

/// A refused request: its status (401 or 403), why, and the challenge to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial<'p> {
    pub status: u16,
    pub reason: Reason,
    /// The `WWW-Authenticate` value.
    challenge: &'p str,
}

impl<'p> Denial<'p> {
    pub(crate) fn unauthorized(reason: Reason, challenge: &'p str) -> Denial<'p> {
        Denial {
            status: 401,
            reason,
            challenge,
        }
    }

    pub(crate) fn forbidden(reason: Reason, challenge: &'p str) -> Denial<'p> {
        Denial {
            status: 403,
            reason,
            challenge,
        }
    }

    pub fn challenge(&self) -> &'p str {
        self.challenge
    }

    /// Appends the `WWW-Authenticate` line of the refusal.
    pub fn write_headers(&self, out: &mut Vec<u8>) {
        write_header(out, b"WWW-Authenticate", self.challenge.as_bytes());
    }
}

/// The outcome of an authentication check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'p> {
    Allow,
    Deny(Denial<'p>),
}

/// How a route authenticates callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    ApiKeys(ApiKeyAuth),
    Jwt(JwtPolicy),
}

impl Auth {
    /// Checks a request. `header(name)` returns the request's first header of that name
    /// (case-insensitive), `now` is Unix seconds, `cache` is the worker's JWT cache. On
    /// [`Verdict::Allow`] the identity headers for the upstream (`forward_as`,
    /// `claims_to_headers`) have been appended to `forward`.
    pub fn check<'p, 'b>(
        &'p self,
        header: impl Fn(&[u8]) -> Option<&'b [u8]>,
        now: u64,
        cache: &mut JwtCache,
        forward: &mut Vec<u8>,
    ) -> Verdict<'p> {
        match self {
            Auth::ApiKeys(keys) => keys.check(header(keys.header.as_bytes()), forward),
            Auth::Jwt(policy) => cache.check(policy, header(b"authorization"), now, forward),
        }
    }

    /// Whether a client's request header named `name` must not be forwarded: the API key, and
    /// any header the gateway fills with the caller's identity (so it cannot be forged).
    pub fn strips(&self, name: &[u8]) -> bool {
        match self {
            Auth::ApiKeys(keys) => keys.strips(name),
            Auth::Jwt(policy) => policy.strips(name),
        }
    }
}

/// Everything access-related about one route. The config keeps one per route, at the route's
/// index (`Config::route_policies`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoutePolicy {
    /// Checked after the global filter; open when nothing is configured.
    pub ip: IpFilter,
    pub cors: Option<CorsPolicy>,
    pub auth: Option<Auth>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

impl RoutePolicy {
    /// Whether the route has no access rules at all (the proxy can skip this module).
    pub fn is_empty(&self) -> bool {
        self.ip.is_open()
            && self.cors.is_none()
            && self.auth.is_none()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
    }

    /// Whether a client's request header named `name` is left out of the upstream request:
    /// removed or replaced by `request_headers`, or stripped by `auth`.
    pub fn drops_request_header(&self, name: &[u8]) -> bool {
        self.request_headers.drops(name) || self.auth.as_ref().is_some_and(|a| a.strips(name))
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::headers::Side;
    use super::*;

    fn api_keys() -> Auth {
        let keys =
            KeySet::parse(&format!("svc:{}\n", hash_key("k1")), Path::new("k")).unwrap_or_default();
        Auth::ApiKeys(ApiKeyAuth::new(
            PathBuf::from("k"),
            "X-API-Key".into(),
            Some("X-Caller".into()),
            keys,
        ))
    }

    #[test]
    fn auth_reads_its_header() {
        let auth = api_keys();
        let mut cache = JwtCache::new(4);
        let mut forward = Vec::new();
        let headers: &[(&[u8], &[u8])] = &[(b"x-api-key", b"k1"), (b"authorization", b"Bearer x")];
        let get = |name: &[u8]| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|&(_, v)| v)
        };
        assert_eq!(auth.check(get, 0, &mut cache, &mut forward), Verdict::Allow);
        assert_eq!(forward, b"X-Caller: svc\r\n");
        assert!(matches!(
            auth.check(|_| None, 0, &mut cache, &mut forward),
            Verdict::Deny(Denial {
                status: 401,
                reason: Reason::Missing,
                ..
            })
        ));
    }

    #[test]
    fn route_policy_drops() {
        let policy = RoutePolicy {
            auth: Some(api_keys()),
            request_headers: HeaderEdits::new(
                Side::Request,
                vec![("X-Env".into(), "prod".into())],
                vec!["X-Debug".into()],
            )
            .unwrap_or_default(),
            ..RoutePolicy::default()
        };
        assert!(!policy.is_empty());
        for dropped in [&b"x-api-key"[..], b"X-Caller", b"x-env", b"X-DEBUG"] {
            assert!(policy.drops_request_header(dropped));
        }
        assert!(!policy.drops_request_header(b"accept"));
        assert!(RoutePolicy::default().is_empty());
        assert!(!RoutePolicy::default().drops_request_header(b"x-api-key"));
    }

    #[test]
    fn reasons_are_named() {
        assert_eq!(Reason::Signature.as_str(), "bad signature");
        let d = Denial::forbidden(Reason::Scope, "Bearer error=\"insufficient_scope\"");
        assert_eq!(d.status, 403);
        assert_eq!(d.challenge(), "Bearer error=\"insufficient_scope\"");
    }
}
