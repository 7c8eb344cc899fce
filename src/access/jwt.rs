//! JWT bearer tokens: a route's verification policy ([`JwtPolicy`], built at config load) and a
//! worker's cache of verification results ([`JwtCache`]).
//!
//! Signatures are checked by `jsonwebtoken` (on `ring`); this module decides everything around
//! them. The key's type is bound to an algorithm family when the policy is built: a
//! `secret_file` only ever verifies HS256/384/512 and refuses to hold a PEM key, a
//! `public_key_file` is loaded as the one asymmetric family its algorithms name, and a JWKS
//! holds no symmetric keys. So a token whose header says `HS256` can never be checked against
//! an RSA public key used as an HMAC secret (the classic algorithm confusion), and the header's
//! `alg` must also be one the route lists; `alg: none` is not an algorithm at all.
//!
//! Expiry (`exp`, required) and `nbf` are checked here against the caller's `now` (Unix
//! seconds) with the configured leeway, so tests and the cache agree on one clock; `iss` and
//! `aud`, when configured, must be present and match.
//!
//! Tokens are network input: they are parsed only after the cheap checks, never echoed, and a
//! claim copied into a request header must be a clean header value or the token is refused.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use ring::digest::{Context, SHA256};
use serde::Serialize;
use serde_json::{Map, Value};

use super::headers::{editable, Side};
use super::{write_header, Denial, Reason, Verdict};
use crate::http::chars::is_tchar;

/// The 401 challenge when no token was sent (RFC 6750 §3: no error code then).
pub const CHALLENGE_MISSING: &str = "Bearer";
/// The 401 challenge for a token that failed verification.
pub const CHALLENGE_INVALID: &str = "Bearer error=\"invalid_token\"";
/// The 403 challenge for a valid token without the required scopes.
pub const CHALLENGE_SCOPE: &str = "Bearer error=\"insufficient_scope\"";

/// Where a route's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A shared secret (the file's bytes, without a trailing newline), for HS256/384/512.
    SecretFile(PathBuf),
    /// One PEM public key (RSA, EC or Ed25519), for RS*/PS*, ES256/384 or EdDSA.
    PublicKeyFile(PathBuf),
    /// A JWKS document; the token's `kid` picks the key.
    JwksFile(PathBuf),
}

impl KeySource {
    pub fn path(&self) -> &PathBuf {
        match self {
            KeySource::SecretFile(p) | KeySource::PublicKeyFile(p) | KeySource::JwksFile(p) => p,
        }
    }
}

/// A route's JWT settings as written (what `/config` shows: paths, never key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtSettings {
    pub algorithms: Vec<Algorithm>,
    pub key: KeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Tolerated clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// Every one must be granted by the token's `scope` (space-separated) or `scp` claim.
    pub required_scopes: Vec<String>,
    /// (claim, request header) pairs: the claim's value is sent upstream in that header.
    pub claims_to_headers: Vec<(String, String)>,
}

/// The default leeway.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// Why a policy could not be built; each variant names the settings key it is about.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// About `algorithms`.
    #[error("{0}")]
    Algorithms(String),
    /// About the key file (`secret_file`, `public_key_file` or `jwks_file`).
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// About `claims_to_headers.<claim>`.
    #[error("{message}")]
    ClaimHeader { claim: String, message: String },
    /// About `required_scopes[index]`.
    #[error("{message}")]
    Scope { index: usize, message: String },
}

/// Parses an algorithm name as JOSE spells it (`"RS256"`, `"EdDSA"`).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
    }
}

/// RFC 7518 §3.2: an HMAC key at least as long as the hash.
fn min_secret(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// One verification key with the validation rules for the algorithms it may check.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    /// Its `algorithms` are the route's algorithms of this key's family only, which is what
    /// jsonwebtoken checks the token header against.
    validation: Validation,
}

/// A route's compiled JWT policy: settings, loaded keys, and a fingerprint of both that keys
/// the verification cache (so a reload with new keys or rules never reuses old results).
#[derive(Clone)]
pub struct JwtPolicy {
    settings: JwtSettings,
    keys: Vec<Key>,
    fingerprint: [u8; 32],
}

impl fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("settings", &self.settings)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for JwtPolicy {
    fn eq(&self, other: &JwtPolicy) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for JwtPolicy {}

impl Serialize for JwtPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.settings.serialize(serializer)
    }
}

impl JwtPolicy {
    /// Reads the key file named in `settings` and builds the policy.
    pub fn load(settings: JwtSettings) -> Result<JwtPolicy, JwtError> {
        let path = settings.key.path();
        let material = std::fs::read(path).map_err(|source| JwtError::Io {
            path: path.clone(),
            source,
        })?;
        JwtPolicy::new(settings, &material)
    }

    /// Builds the policy from the key file's contents.
    pub fn new(settings: JwtSettings, material: &[u8]) -> Result<JwtPolicy, JwtError> {
        check_settings(&settings)?;
        let path = settings.key.path().clone();
        let key_error = |message: String| JwtError::Key {
            path: path.clone(),
            message,
        };
        let families: Vec<Family> = dedup(settings.algorithms.iter().map(|&a| family(a)));
        let keys = match &settings.key {
            KeySource::SecretFile(_) => {
                if families != [Family::Hmac] {
                    return Err(JwtError::Algorithms(
                        "secret_file verifies HS256, HS384 and HS512 only; RS, PS, ES and EdDSA \
                         need public_key_file or jwks_file"
                            .into(),
                    ));
                }
                let secret = trim_newline(material);
                if secret.starts_with(b"-----BEGIN") {
                    return Err(key_error(
                        "holds a PEM key, not a shared secret: an RSA or EC key is a \
                         public_key_file, never an HMAC secret"
                            .into(),
                    ));
                }
                let need = settings
                    .algorithms
                    .iter()
                    .map(|&a| min_secret(a))
                    .max()
                    .unwrap_or(32);
                if secret.len() < need {
                    return Err(key_error(format!(
                        "the secret is {} bytes; the algorithms need at least {need}",
                        secret.len()
                    )));
                }
                vec![key(
                    &settings,
                    None,
                    DecodingKey::from_secret(secret),
                    Family::Hmac,
                    None,
                )]
            }
            KeySource::PublicKeyFile(_) => {
                let [family] = families[..] else {
                    return Err(JwtError::Algorithms(
                        "a public_key_file holds one key of one type: list algorithms of one \
                         family (RS/PS, ES or EdDSA), or use jwks_file"
                            .into(),
                    ));
                };
                if contains(material, b"PRIVATE KEY") {
                    return Err(key_error(
                        "holds a private key; the gateway needs only the public key \
                         (`openssl pkey -pubout`)"
                            .into(),
                    ));
                }
                let decoded = match family {
                    Family::Hmac => {
                        return Err(JwtError::Algorithms(
                            "HS256/384/512 take a secret_file, not a public_key_file".into(),
                        ))
                    }
                    Family::Rsa => DecodingKey::from_rsa_pem(material),
                    Family::Ec => DecodingKey::from_ec_pem(material),
                    Family::Ed => DecodingKey::from_ed_pem(material),
                };
                let decoded = decoded.map_err(|e| {
                    key_error(format!(
                        "not a PEM {} public key ({e})",
                        match family {
                            Family::Rsa => "RSA",
                            Family::Ec => "EC",
                            _ => "Ed25519",
                        }
                    ))
                })?;
                vec![key(&settings, None, decoded, family, None)]
            }
            KeySource::JwksFile(_) => {
                if families.contains(&Family::Hmac) {
                    return Err(JwtError::Algorithms(
                        "HS256/384/512 take a secret_file: shared secrets do not belong in a JWKS"
                            .into(),
                    ));
                }
                jwks_keys(&settings, material).map_err(key_error)?
            }
        };
        let mut ctx = Context::new(&SHA256);
        ctx.update(format!("{settings:?}").as_bytes());
        ctx.update(material);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        Ok(JwtPolicy {
            settings,
            keys,
            fingerprint,
        })
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Whether a client's request header named `name` must not reach the upstream: one of the
    /// headers the claims are forwarded in (a client must not be able to pose as a user).
    pub fn strips(&self, name: &[u8]) -> bool {
        self.settings
            .claims_to_headers
            .iter()
            .any(|(_, header)| name.eq_ignore_ascii_case(header.as_bytes()))
    }

    /// Verifies `token` at `now` (Unix seconds), without the cache.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Verified, Reason> {
        let token = std::str::from_utf8(token).map_err(|_| Reason::Malformed)?;
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reason::Malformed)?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(Reason::Algorithm);
        }
        let key = self.select(header.kid.as_deref(), header.alg)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Reason::Signature,
                ErrorKind::InvalidAlgorithm => Reason::Algorithm,
                ErrorKind::InvalidIssuer => Reason::Issuer,
                ErrorKind::InvalidAudience => Reason::Audience,
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => Reason::Issuer,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => Reason::Audience,
                _ => Reason::Malformed,
            })?;
        let claims = data.claims;
        let leeway = self.settings.leeway.as_secs();
        let exp = match claims.get("exp") {
            None => return Err(Reason::Claims),
            Some(v) => numeric_date(v).ok_or(Reason::Claims)?,
        };
        if now > exp.saturating_add(leeway) {
            return Err(Reason::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or(Reason::Claims)?;
            if nbf > now.saturating_add(leeway) {
                return Err(Reason::NotYetValid);
            }
        }
        if !self.has_scopes(&claims) {
            return Ok(Verified {
                expires: exp,
                outcome: Outcome::Forbidden,
            });
        }
        let mut lines = Vec::new();
        for (claim, header) in &self.settings.claims_to_headers {
            let number: String;
            let value: &str = match claims.get(claim) {
                Some(Value::String(s)) => s,
                Some(Value::Number(n)) => {
                    number = n.to_string();
                    &number
                }
                Some(Value::Bool(b)) => {
                    if *b {
                        "true"
                    } else {
                        "false"
                    }
                }
                // Absent, null, arrays and objects have no one header value: not forwarded
                // (the client's header of that name is stripped all the same).
                _ => continue,
            };
            if !is_field_value(value) {
                return Err(Reason::Claims);
            }
            write_header(&mut lines, header.as_bytes(), value.as_bytes());
        }
        Ok(Verified {
            expires: exp,
            outcome: Outcome::Allow(lines.into_boxed_slice()),
        })
    }

    /// The key for a token with this `kid` and `alg`.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Key, Reason> {
        let usable = |k: &&Key| k.validation.algorithms.contains(&alg);
        if let (KeySource::JwksFile(_), Some(kid)) = (&self.settings.key, kid) {
            let key = self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(Reason::UnknownKey)?;
            return if usable(&key) {
                Ok(key)
            } else {
                Err(Reason::Algorithm)
            };
        }
        // No kid (or a single-key source, where kid means nothing): only an unambiguous key.
        let mut candidates = self.keys.iter().filter(usable);
        match (candidates.next(), candidates.next()) {
            (Some(key), None) => Ok(key),
            (None, _) => Err(Reason::Algorithm),
            (Some(_), Some(_)) => Err(Reason::UnknownKey),
        }
    }

    fn has_scopes(&self, claims: &Map<String, Value>) -> bool {
        let required = &self.settings.required_scopes;
        if required.is_empty() {
            return true;
        }
        let granted = |scope: &str| -> bool {
            let in_scope = matches!(claims.get("scope"), Some(Value::String(s))
                if s.split_ascii_whitespace().any(|g| g == scope));
            let in_scp = match claims.get("scp") {
                Some(Value::Array(list)) => list.iter().any(|g| g.as_str() == Some(scope)),
                Some(Value::String(s)) => s.split_ascii_whitespace().any(|g| g == scope),
                _ => false,
            };
            in_scope || in_scp
        };
        required.iter().all(|s| granted(s))
    }
}

/// What a verified token is worth, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's `exp`: results are cached until then.
    pub expires: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pass, adding these `Name: value\r\n` lines (the forwarded claims) upstream.
    Allow(Box<[u8]>),
    /// A valid token without the required scopes: 403.
    Forbidden,
}

fn check_settings(settings: &JwtSettings) -> Result<(), JwtError> {
    if settings.algorithms.is_empty() {
        return Err(JwtError::Algorithms("needs at least one algorithm".into()));
    }
    for (index, scope) in settings.required_scopes.iter().enumerate() {
        // RFC 6749 §3.3 scope-token: printable ASCII without space, '"' or '\'.
        let ok = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(JwtError::Scope {
                index,
                message: format!("`{scope}` is not a scope (printable ASCII, no spaces)"),
            });
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for (claim, header) in &settings.claims_to_headers {
        let fail = |message: String| JwtError::ClaimHeader {
            claim: claim.clone(),
            message,
        };
        if claim.is_empty() {
            return Err(fail("the claim name must not be empty".into()));
        }
        if header.is_empty() || !header.bytes().all(is_tchar) {
            return Err(fail(format!("`{header}` is not a header name")));
        }
        let lower = header.to_ascii_lowercase();
        if !editable(Side::Request, &lower) || lower == "authorization" {
            return Err(fail(format!(
                "`{header}` is managed by the gateway or carries the token; pick another header"
            )));
        }
        if seen.contains(&lower) {
            return Err(fail(format!("`{header}` receives two claims")));
        }
        seen.push(lower);
    }
    Ok(())
}

fn key(
    settings: &JwtSettings,
    kid: Option<String>,
    key: DecodingKey,
    family: Family,
    only: Option<&[Algorithm]>,
) -> Key {
    let algorithms: Vec<Algorithm> = settings
        .algorithms
        .iter()
        .copied()
        .filter(|&a| self::family(a) == family && only.is_none_or(|o| o.contains(&a)))
        .collect();
    let mut validation = Validation::new(algorithms.first().copied().unwrap_or_default());
    validation.algorithms = algorithms;
    // Time is checked against the caller's `now` (see `verify`), not the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let mut required: Vec<&str> = Vec::new();
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    Key {
        kid,
        key,
        validation,
    }
}

/// The usable signing keys of a JWKS document.
fn jwks_keys(settings: &JwtSettings, material: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_slice(material).map_err(|e| format!("not a JWKS document ({e})"))?;
    let mut keys: Vec<Key> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk
            .common
            .key_id
            .as_ref()
            .map_or_else(|| format!("key {i}"), |kid| format!("key `{kid}`"));
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        // Each key type with the algorithms it can check (by curve for EC and OKP).
        let (family, fits): (Family, &[Algorithm]) = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "{name} is a symmetric (oct) key: shared secrets go in a secret_file"
                ))
            }
            AlgorithmParameters::RSA(_) => (
                Family::Rsa,
                &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
            ),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => (Family::Ec, &[Algorithm::ES256]),
                EllipticCurve::P384 => (Family::Ec, &[Algorithm::ES384]),
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => (Family::Ed, &[Algorithm::EdDSA]),
                _ => continue,
            },
        };
        // A key that names its algorithm is only for that one (RFC 7517 §4.4).
        let named = match &jwk.common.key_algorithm {
            None => None,
            Some(ka) => match parse_algorithm(&ka.to_string()) {
                Some(alg) => Some(alg),
                None => continue,
            },
        };
        let allowed: Vec<Algorithm> = fits
            .iter()
            .copied()
            .filter(|a| named.is_none_or(|n| n == *a))
            .collect();
        if !settings.algorithms.iter().any(|a| allowed.contains(a)) {
            continue;
        }
        if let Some(kid) = &jwk.common.key_id {
            if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                return Err(format!("{name} appears twice"));
            }
        }
        let decoded = DecodingKey::from_jwk(jwk).map_err(|e| format!("{name}: {e}"))?;
        keys.push(key(
            settings,
            jwk.common.key_id.clone(),
            decoded,
            family,
            Some(&allowed),
        ));
    }
    if keys.is_empty() {
        return Err("holds no signing key for the configured algorithms".into());
    }
    Ok(keys)
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A NumericDate (RFC 7519 §2): non-negative seconds, possibly fractional.
fn numeric_date(v: &Value) -> Option<u64> {
    match v.as_u64() {
        Some(n) => Some(n),
        None => v
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64),
    }
}

/// A value that can go in a header as is: no controls, no surrounding whitespace.
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) && s.trim_matches([' ', '\t']) == s
}

/// The token of an `Authorization: Bearer <token>` value: `Ok(None)` for another scheme (the
/// route then answers as if no token was sent), `Err` for a Bearer value that is no token.
pub fn bearer_token(authorization: &[u8]) -> Result<Option<&[u8]>, Reason> {
    let value = authorization.trim_ascii();
    let scheme_end = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = rest.trim_ascii();
    // RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_end = token
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)))
        .unwrap_or(token.len());
    let (body, padding) = token.split_at(body_end);
    if body.is_empty() || !padding.iter().all(|&b| b == b'=') {
        return Err(Reason::Malformed);
    }
    Ok(Some(token))
}

/// Counters of one worker's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Tokens answered from the cache.
    pub hits: u64,
    /// Tokens verified in full (misses and expired entries).
    pub verifications: u64,
    /// Live entries dropped to make room.
    pub evictions: u64,
}

struct Slot {
    key: [u8; 32],
    expires: u64,
    outcome: Outcome,
}

/// One worker's cache of verification results, keyed by a SHA-256 of the policy's fingerprint
/// and the token, so a repeated token skips the signature check and the claim parsing. Only
/// verified tokens are stored (a flood of bad tokens cannot push good ones out faster than a
/// flood of good ones could), each until its `exp`; past `capacity` entries the oldest slot in
/// insertion order is reused. One per worker, touched by that worker only: no locks.
pub struct JwtCache {
    capacity: usize,
    index: ahash::AHashMap<[u8; 32], usize>,
    slots: Vec<Option<Slot>>,
    /// Slots emptied by expiry, reused first.
    free: Vec<usize>,
    /// The next slot to evict once all are in use.
    hand: usize,
    stats: CacheStats,
}

/// The default entry bound per worker: about 1–2 MiB with typical forwarded claims.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

impl JwtCache {
    /// A cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> JwtCache {
        JwtCache {
            capacity,
            index: ahash::AHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Checks the request's `Authorization` value (`None` when absent) against `policy` at
    /// `now` (Unix seconds). On [`Verdict::Allow`], the forwarded claims are appended to
    /// `forward` as `Name: value\r\n` lines. A hit allocates nothing.
    pub fn check(
        &mut self,
        policy: &JwtPolicy,
        authorization: Option<&[u8]>,
        now: u64,
        forward: &mut Vec<u8>,
    ) -> Verdict<'static> {
        let token = match authorization.map(bearer_token) {
            None | Some(Ok(None)) => {
                return Verdict::Deny(Denial::unauthorized(Reason::Missing, CHALLENGE_MISSING))
            }
            Some(Err(reason)) => {
                return Verdict::Deny(Denial::unauthorized(reason, CHALLENGE_INVALID))
            }
            Some(Ok(Some(token))) => token,
        };
        let mut ctx = Context::new(&SHA256);
        ctx.update(&policy.fingerprint);
        ctx.update(token);
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());

        if let Some(&i) = self.index.get(&key) {
            match self.slots.get(i).and_then(Option::as_ref) {
                Some(slot) if now < slot.expires => {
                    self.stats.hits += 1;
                    return apply(&slot.outcome, forward);
                }
                _ => {
                    self.index.remove(&key);
                    if let Some(slot) = self.slots.get_mut(i) {
                        *slot = None;
                        self.free.push(i);
                    }
                }
            }
        }

        self.stats.verifications += 1;
        match policy.verify(token, now) {
            Ok(verified) => {
                let verdict = apply(&verified.outcome, forward);
                if now < verified.expires {
                    self.insert(key, verified);
                }
                verdict
            }
            Err(reason) => Verdict::Deny(Denial::unauthorized(reason, CHALLENGE_INVALID)),
        }
    }

    fn insert(&mut self, key: [u8; 32], verified: Verified) {
        if self.capacity == 0 {
            return;
        }
        let slot = Some(Slot {
            key,
            expires: verified.expires,
            outcome: verified.outcome,
        });
        let i = if let Some(i) = self.free.pop() {
            i
        } else if self.slots.len() < self.capacity {
            self.slots.push(None);
            self.slots.len() - 1
        } else {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            if let Some(old) = self.slots.get(i).and_then(Option::as_ref) {
                self.index.remove(&old.key);
                self.stats.evictions += 1;
            }
            i
        };
        if let Some(place) = self.slots.get_mut(i) {
            *place = slot;
            self.index.insert(key, i);
        }
    }
}

fn apply(outcome: &Outcome, forward: &mut Vec<u8>) -> Verdict<'static> {
    match outcome {
        Outcome::Allow(lines) => {
            forward.extend_from_slice(lines);
            Verdict::Allow
        }
        Outcome::Forbidden => Verdict::Deny(Denial::forbidden(Reason::Scope, CHALLENGE_SCOPE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const RSA_PRIVATE: &str = include_str!("../../tests/data/jwt/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../tests/data/jwt/rsa-public.pem");
    const RSA2_PRIVATE: &str = include_str!("../../tests/data/jwt/rsa2-private.pem");
    const EC_PRIVATE: &str = include_str!("../../tests/data/jwt/ec-private.pem");
    const EC_PUBLIC: &str = include_str!("../../tests/data/jwt/ec-public.pem");
    const ED_PRIVATE: &str = include_str!("../../tests/data/jwt/ed-private.pem");
    const ED_PUBLIC: &str = include_str!("../../tests/data/jwt/ed-public.pem");
    const JWKS: &str = include_str!("../../tests/data/jwt/jwks.json");
    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    const NOW: u64 = 1_800_000_000;

    fn settings(algorithms: &[Algorithm], key: KeySource) -> JwtSettings {
        JwtSettings {
            algorithms: algorithms.to_vec(),
            key,
            issuer: Some("https://issuer.test".into()),
            audience: Some("api".into()),
            leeway: DEFAULT_LEEWAY,
            required_scopes: Vec::new(),
            claims_to_headers: vec![("sub".into(), "X-User-Id".into())],
        }
    }

    fn rs256() -> JwtPolicy {
        policy(
            settings(
                &[Algorithm::RS256],
                KeySource::PublicKeyFile("rsa.pem".into()),
            ),
            RSA_PUBLIC.as_bytes(),
        )
    }

    fn policy(s: JwtSettings, material: &[u8]) -> JwtPolicy {
        JwtPolicy::new(s, material).unwrap_or_else(|e| panic!("{e}"))
    }

    fn claims() -> Value {
        json!({
            "sub": "user-42",
            "iss": "https://issuer.test",
            "aud": "api",
            "exp": NOW + 3600,
            "nbf": NOW - 10,
            "scope": "read write",
        })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(String::from);
        encode(&header, claims, key).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rsa_key(pem: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rs_token(claims: &Value) -> String {
        sign(Algorithm::RS256, None, &rsa_key(RSA_PRIVATE), claims)
    }

    fn verify(p: &JwtPolicy, token: &str) -> Result<Verified, Reason> {
        p.verify(token.as_bytes(), NOW)
    }

    fn allowed(p: &JwtPolicy, token: &str) -> String {
        match verify(p, token) {
            Ok(Verified {
                outcome: Outcome::Allow(lines),
                ..
            }) => String::from_utf8_lossy(&lines).into_owned(),
            other => panic!("expected Allow, got {other:?}"),
        }
    }

    fn with(claims: &Value, key: &str, value: Value) -> Value {
        let mut c = claims.clone();
        if let Some(map) = c.as_object_mut() {
            if value.is_null() {
                map.remove(key);
            } else {
                map.insert(key.into(), value);
            }
        }
        c
    }

    fn b64(json: &str) -> String {
        use base64_url as b;
        b::encode(json.as_bytes())
    }

    /// Unpadded base64url, enough to forge headers in tests.
    mod base64_url {
        pub fn encode(bytes: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk.first().copied().unwrap_or(0),
                    chunk.get(1).copied().unwrap_or(0),
                    chunk.get(2).copied().unwrap_or(0),
                ];
                let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(char::from(T[(n >> (18 - 6 * i) & 63) as usize]));
                }
            }
            out
        }
    }

    #[test]
    fn valid_rs256_token_forwards_claims() {
        let p = rs256();
        assert_eq!(allowed(&p, &rs_token(&claims())), "X-User-Id: user-42\r\n");
        let verified = verify(&p, &rs_token(&claims())).ok();
        assert_eq!(verified.map(|v| v.expires), Some(NOW + 3600));
    }

    #[test]
    fn valid_es256_and_eddsa_tokens() {
        let es = policy(
            settings(
                &[Algorithm::ES256],
                KeySource::PublicKeyFile("ec.pem".into()),
            ),
            EC_PUBLIC.as_bytes(),
        );
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        allowed(&es, &sign(Algorithm::ES256, None, &key, &claims()));

        let ed = policy(
            settings(
                &[Algorithm::EdDSA],
                KeySource::PublicKeyFile("ed.pem".into()),
            ),
            ED_PUBLIC.as_bytes(),
        );
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        allowed(&ed, &sign(Algorithm::EdDSA, None, &key, &claims()));
        // An EdDSA token on the ES256 route: not its algorithm.
        assert_eq!(
            verify(&es, &sign(Algorithm::EdDSA, None, &key, &claims())).err(),
            Some(Reason::Algorithm)
        );
    }

    #[test]
    fn hs256_with_a_secret() {
        let mut s = settings(&[Algorithm::HS256], KeySource::SecretFile("s".into()));
        s.claims_to_headers.push(("admin".into(), "X-Admin".into()));
        s.claims_to_headers.push(("level".into(), "X-Level".into()));
        s.claims_to_headers
            .push(("groups".into(), "X-Groups".into()));
        let mut material = SECRET.to_vec();
        material.push(b'\n');
        let p = policy(s, &material);
        let c = with(&with(&claims(), "admin", json!(true)), "level", json!(3));
        let c = with(&c, "groups", json!(["a", "b"]));
        let token = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET),
            &c,
        );
        assert_eq!(
            allowed(&p, &token),
            "X-User-Id: user-42\r\nX-Admin: true\r\nX-Level: 3\r\n",
            "arrays are not forwarded; the trailing newline is not part of the secret"
        );
        let other = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!");
        assert_eq!(
            verify(&p, &sign(Algorithm::HS256, None, &other, &c)).err(),
            Some(Reason::Signature)
        );
    }

    #[test]
    fn time_claims_and_leeway() {
        let p = rs256();
        // exp in the past, but within the 60 s leeway: accepted.
        allowed(&p, &rs_token(&with(&claims(), "exp", json!(NOW - 60))));
        assert_eq!(
            verify(&p, &rs_token(&with(&claims(), "exp", json!(NOW - 61)))).err(),
            Some(Reason::Expired)
        );
        // nbf in the future, within the leeway: accepted; beyond it: refused.
        allowed(&p, &rs_token(&with(&claims(), "nbf", json!(NOW + 60))));
        assert_eq!(
            verify(&p, &rs_token(&with(&claims(), "nbf", json!(NOW + 61)))).err(),
            Some(Reason::NotYetValid)
        );
        // No exp at all: refused (it would be valid forever).
        assert_eq!(
            verify(&p, &rs_token(&with(&claims(), "exp", Value::Null))).err(),
            Some(Reason::Claims)
        );
        assert_eq!(
            verify(&p, &rs_token(&with(&claims(), "exp", json!("tomorrow")))).err(),
            Some(Reason::Claims)
        );
        allowed(
            &p,
            &rs_token(&with(&claims(), "exp", json!((NOW + 5) as f64 + 0.5))),
        );

        let mut strict = settings(&[Algorithm::RS256], KeySource::PublicKeyFile("r".into()));
        strict.leeway = Duration::ZERO;
        let strict = policy(strict, RSA_PUBLIC.as_bytes());
        assert_eq!(
            verify(&strict, &rs_token(&with(&claims(), "exp", json!(NOW - 1)))).err(),
            Some(Reason::Expired)
        );
        allowed(&strict, &rs_token(&with(&claims(), "exp", json!(NOW))));
    }

    #[test]
    fn issuer_and_audience() {
        let p = rs256();
        let cases = [
            ("aud", json!("other"), Reason::Audience),
            ("aud", Value::Null, Reason::Audience),
            ("iss", json!("https://evil.test"), Reason::Issuer),
            ("iss", Value::Null, Reason::Issuer),
        ];
        for (claim, value, reason) in cases {
            let token = rs_token(&with(&claims(), claim, value.clone()));
            assert_eq!(verify(&p, &token).err(), Some(reason), "{claim}={value}");
        }
        allowed(
            &p,
            &rs_token(&with(&claims(), "aud", json!(["other", "api"]))),
        );

        // Without a configured audience, a token's aud is not checked.
        let mut open = settings(&[Algorithm::RS256], KeySource::PublicKeyFile("r".into()));
        open.audience = None;
        open.issuer = None;
        let open = policy(open, RSA_PUBLIC.as_bytes());
        allowed(&open, &rs_token(&with(&claims(), "aud", json!("anything"))));
        allowed(&open, &rs_token(&with(&claims(), "iss", Value::Null)));
    }

    #[test]
    fn wrong_signature_and_tampering() {
        let p = rs256();
        let other = sign(Algorithm::RS256, None, &rsa_key(RSA2_PRIVATE), &claims());
        assert_eq!(verify(&p, &other).err(), Some(Reason::Signature));

        // A valid signature over other claims.
        let token = rs_token(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims =
            b64(r#"{"sub":"admin","iss":"https://issuer.test","aud":"api","exp":1900000000}"#);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(verify(&p, &forged).err(), Some(Reason::Signature));

        for junk in ["", "a", "a.b", "a.b.c", "a.b.c.d", "\u{1F600}.x.y"] {
            assert_eq!(verify(&p, junk).err(), Some(Reason::Malformed), "{junk:?}");
        }
        assert_eq!(
            p.verify(b"\xff.\xfe.\xfd", NOW).err(),
            Some(Reason::Malformed)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let p = rs256();
        let payload = b64(&claims().to_string());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            for signature in ["", "c2ln"] {
                let token = format!("{}.{payload}.{signature}", b64(header));
                assert!(verify(&p, &token).is_err(), "{header} accepted");
            }
        }
    }

    #[test]
    fn hs_rs_confusion_is_refused() {
        // The classic attack: sign HS256 with the RSA public key's PEM bytes as the secret.
        let p = rs256();
        let forged = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &claims(),
        );
        assert_eq!(verify(&p, &forged).err(), Some(Reason::Algorithm));

        // Listing HS256 beside RS256 for a public key is refused at load...
        let both = settings(
            &[Algorithm::RS256, Algorithm::HS256],
            KeySource::PublicKeyFile("r".into()),
        );
        assert!(matches!(
            JwtPolicy::new(both, RSA_PUBLIC.as_bytes()),
            Err(JwtError::Algorithms(_))
        ));
        // ...and so is an RSA key given as an HS secret.
        let hs = settings(&[Algorithm::HS256], KeySource::SecretFile("s".into()));
        assert!(matches!(
            JwtPolicy::new(hs, RSA_PUBLIC.as_bytes()),
            Err(JwtError::Key { .. })
        ));
        // An HS route refuses an RS token, signature unseen.
        let hs = policy(
            settings(&[Algorithm::HS256], KeySource::SecretFile("s".into())),
            SECRET,
        );
        assert_eq!(
            verify(&hs, &rs_token(&claims())).err(),
            Some(Reason::Algorithm)
        );
        // A JWKS never holds symmetric keys.
        let oct =
            br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        let jwks = settings(&[Algorithm::RS256], KeySource::JwksFile("j".into()));
        assert!(matches!(
            JwtPolicy::new(jwks, oct),
            Err(JwtError::Key { .. })
        ));
    }

    #[test]
    fn key_files_are_checked_at_load() {
        let load = |algs: &[Algorithm], key: KeySource, material: &[u8]| {
            JwtPolicy::new(settings(algs, key), material).map(|_| ())
        };
        let pem = |p: &str| KeySource::PublicKeyFile(p.into());
        assert!(matches!(
            load(
                &[Algorithm::HS256],
                KeySource::SecretFile("s".into()),
                b"short"
            ),
            Err(JwtError::Key { .. })
        ));
        assert!(
            matches!(
                load(
                    &[Algorithm::HS512],
                    KeySource::SecretFile("s".into()),
                    SECRET
                ),
                Err(JwtError::Key { .. })
            ),
            "HS512 needs 64 bytes"
        );
        assert!(
            matches!(
                load(&[Algorithm::RS256], pem("r"), RSA_PRIVATE.as_bytes()),
                Err(JwtError::Key { .. })
            ),
            "private keys are refused"
        );
        assert!(
            matches!(
                load(&[Algorithm::RS256], pem("r"), EC_PUBLIC.as_bytes()),
                Err(JwtError::Key { .. })
            ),
            "an EC key for RS256"
        );
        assert!(matches!(
            load(&[Algorithm::ES256], pem("r"), RSA_PUBLIC.as_bytes()),
            Err(JwtError::Key { .. })
        ));
        assert!(matches!(
            load(&[Algorithm::RS256], pem("r"), b"not pem"),
            Err(JwtError::Key { .. })
        ));
        assert!(matches!(
            load(
                &[Algorithm::RS256, Algorithm::ES256],
                pem("r"),
                RSA_PUBLIC.as_bytes()
            ),
            Err(JwtError::Algorithms(_))
        ));
        assert!(matches!(
            load(&[], pem("r"), RSA_PUBLIC.as_bytes()),
            Err(JwtError::Algorithms(_))
        ));
        assert!(matches!(
            load(&[Algorithm::RS256], KeySource::JwksFile("j".into()), b"{}"),
            Err(JwtError::Key { .. })
        ));
        assert!(
            matches!(
                load(
                    &[Algorithm::ES384],
                    KeySource::JwksFile("j".into()),
                    JWKS.as_bytes()
                ),
                Err(JwtError::Key { .. })
            ),
            "no P-384 key in the set"
        );
        let message = JwtPolicy::new(settings(&[Algorithm::RS256], pem("/k/r.pem")), b"x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with("/k/r.pem: not a PEM RSA public key"),
            "{message}"
        );
        let err = JwtPolicy::load(settings(&[Algorithm::RS256], pem("/nonexistent/k.pem")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("cannot read /nonexistent/k.pem"), "{err}");

        let mut bad = settings(&[Algorithm::RS256], pem("r"));
        bad.claims_to_headers = vec![("sub".into(), "Host".into())];
        assert!(
            matches!(JwtPolicy::new(bad.clone(), RSA_PUBLIC.as_bytes()), Err(JwtError::ClaimHeader { claim, .. }) if claim == "sub")
        );
        bad.claims_to_headers = vec![("sub".into(), "X-A".into()), ("email".into(), "x-a".into())];
        assert!(
            matches!(JwtPolicy::new(bad.clone(), RSA_PUBLIC.as_bytes()), Err(JwtError::ClaimHeader { claim, .. }) if claim == "email")
        );
        bad.claims_to_headers = Vec::new();
        bad.required_scopes = vec!["ok".into(), "two words".into()];
        assert!(matches!(
            JwtPolicy::new(bad, RSA_PUBLIC.as_bytes()),
            Err(JwtError::Scope { index: 1, .. })
        ));
    }

    #[test]
    fn jwks_selects_by_kid() {
        let p = policy(
            settings(
                &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
                KeySource::JwksFile("jwks.json".into()),
            ),
            JWKS.as_bytes(),
        );
        let rsa = rsa_key(RSA_PRIVATE);
        let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        allowed(&p, &sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims()));
        allowed(&p, &sign(Algorithm::ES256, Some("ec-1"), &ec, &claims()));
        allowed(&p, &sign(Algorithm::EdDSA, Some("ed-1"), &ed, &claims()));
        // Without a kid the algorithm still picks one key unambiguously here.
        allowed(&p, &sign(Algorithm::ES256, None, &ec, &claims()));
        assert_eq!(
            verify(&p, &sign(Algorithm::RS256, Some("nope"), &rsa, &claims())).err(),
            Some(Reason::UnknownKey)
        );
        // The kid of the EC key with an RS256 header: that key cannot check RS256.
        assert_eq!(
            verify(&p, &sign(Algorithm::RS256, Some("ec-1"), &rsa, &claims())).err(),
            Some(Reason::Algorithm)
        );
        // rsa-1 says alg RS256: a PS256 token is refused even though the route lists RSA.
        let mut ps = settings(
            &[Algorithm::RS256, Algorithm::PS256],
            KeySource::JwksFile("j".into()),
        );
        ps.audience = Some("api".into());
        let ps = policy(ps, JWKS.as_bytes());
        assert_eq!(
            verify(&ps, &sign(Algorithm::PS256, Some("rsa-1"), &rsa, &claims())).err(),
            Some(Reason::Algorithm)
        );
        // Signed by another RSA key under rsa-1's kid.
        assert_eq!(
            verify(
                &p,
                &sign(
                    Algorithm::RS256,
                    Some("rsa-1"),
                    &rsa_key(RSA2_PRIVATE),
                    &claims()
                )
            )
            .err(),
            Some(Reason::Signature)
        );
    }

    #[test]
    fn scopes() {
        let mut s = settings(&[Algorithm::RS256], KeySource::PublicKeyFile("r".into()));
        s.required_scopes = vec!["read".into(), "write".into()];
        let p = policy(s, RSA_PUBLIC.as_bytes());
        allowed(&p, &rs_token(&claims()));
        allowed(
            &p,
            &rs_token(&with(
                &with(&claims(), "scope", Value::Null),
                "scp",
                json!(["write", "read"]),
            )),
        );
        allowed(
            &p,
            &rs_token(&with(&claims(), "scope", json!("admin write  read"))),
        );
        for scope in [
            json!("read"),
            json!("readwrite"),
            Value::Null,
            json!(["read", "write"]),
        ] {
            let token = rs_token(&with(&claims(), "scope", scope.clone()));
            assert_eq!(
                verify(&p, &token).map(|v| v.outcome),
                Ok(Outcome::Forbidden),
                "scope {scope}"
            );
        }
    }

    #[test]
    fn claims_that_cannot_be_headers_refuse_the_token() {
        let p = rs256();
        let token = rs_token(&with(&claims(), "sub", json!("user\r\nX-Admin: true")));
        assert_eq!(verify(&p, &token).err(), Some(Reason::Claims));
        // No sub: nothing forwarded, still valid.
        assert_eq!(
            allowed(&p, &rs_token(&with(&claims(), "sub", Value::Null))),
            ""
        );
    }

    #[test]
    fn bearer_values() {
        assert_eq!(
            bearer_token(b"Bearer abc.def-_~+/=="),
            Ok(Some(&b"abc.def-_~+/=="[..]))
        );
        assert_eq!(bearer_token(b"bearer   abc  "), Ok(Some(&b"abc"[..])));
        assert_eq!(bearer_token(b"Basic dXNlcjpwYXNz"), Ok(None));
        assert_eq!(bearer_token(b"Bearerabc"), Ok(None));
        assert_eq!(bearer_token(b"Bearer"), Err(Reason::Malformed));
        assert_eq!(bearer_token(b"Bearer a b"), Err(Reason::Malformed));
        assert_eq!(bearer_token(b"Bearer ==="), Err(Reason::Malformed));
        assert_eq!(bearer_token(b"Bearer a=b"), Err(Reason::Malformed));
    }

    fn header_line(verdict: Verdict<'_>) -> (u16, Reason, String) {
        match verdict {
            Verdict::Deny(d) => {
                let mut out = Vec::new();
                d.write_headers(&mut out);
                (
                    d.status,
                    d.reason,
                    String::from_utf8_lossy(&out).into_owned(),
                )
            }
            Verdict::Allow => panic!("allowed"),
        }
    }

    #[test]
    fn cache_check_answers() {
        let p = rs256();
        let mut cache = JwtCache::new(16);
        let mut fwd = Vec::new();
        assert_eq!(
            header_line(cache.check(&p, None, NOW, &mut fwd)),
            (401, Reason::Missing, "WWW-Authenticate: Bearer\r\n".into())
        );
        assert_eq!(
            header_line(cache.check(&p, Some(b"Basic eDp5"), NOW, &mut fwd)),
            (401, Reason::Missing, "WWW-Authenticate: Bearer\r\n".into())
        );
        assert_eq!(
            header_line(cache.check(&p, Some(b"Bearer a b"), NOW, &mut fwd)),
            (
                401,
                Reason::Malformed,
                "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n".into()
            )
        );
        let expired = format!(
            "Bearer {}",
            rs_token(&with(&claims(), "exp", json!(NOW - 3600)))
        );
        assert_eq!(
            header_line(cache.check(&p, Some(expired.as_bytes()), NOW, &mut fwd)),
            (
                401,
                Reason::Expired,
                "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n".into()
            )
        );
        assert!(fwd.is_empty());

        let mut scoped = settings(&[Algorithm::RS256], KeySource::PublicKeyFile("r".into()));
        scoped.required_scopes = vec!["admin".into()];
        let scoped = policy(scoped, RSA_PUBLIC.as_bytes());
        let token = format!("Bearer {}", rs_token(&claims()));
        for _ in 0..2 {
            assert_eq!(
                header_line(cache.check(&scoped, Some(token.as_bytes()), NOW, &mut fwd)),
                (
                    403,
                    Reason::Scope,
                    "WWW-Authenticate: Bearer error=\"insufficient_scope\"\r\n".into()
                )
            );
        }
        assert!(fwd.is_empty());
        // The same token on the other route is judged by that route's policy.
        assert_eq!(
            cache.check(&p, Some(token.as_bytes()), NOW, &mut fwd),
            Verdict::Allow
        );
        assert_eq!(fwd, b"X-User-Id: user-42\r\n");
    }

    #[test]
    fn cache_hits_skip_verification_and_expire() {
        let p = rs256();
        let mut cache = JwtCache::new(16);
        let token = format!(
            "Bearer {}",
            rs_token(&with(&claims(), "exp", json!(NOW + 100)))
        );
        let mut fwd = Vec::new();
        for i in 0..5 {
            fwd.clear();
            assert_eq!(
                cache.check(&p, Some(token.as_bytes()), NOW + i, &mut fwd),
                Verdict::Allow
            );
            assert_eq!(fwd, b"X-User-Id: user-42\r\n");
        }
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 4,
                verifications: 1,
                evictions: 0
            }
        );
        // At exp the entry is gone: verified again (still inside the leeway, so allowed, but
        // no longer cached since it is past exp).
        assert_eq!(
            cache.check(&p, Some(token.as_bytes()), NOW + 100, &mut fwd),
            Verdict::Allow
        );
        assert_eq!(cache.stats().verifications, 2);
        assert!(cache.is_empty());
        assert_eq!(
            cache.check(&p, Some(token.as_bytes()), NOW + 101, &mut fwd),
            Verdict::Allow
        );
        assert_eq!(cache.stats().verifications, 3);
        // Past the leeway: refused, by a full verification.
        assert!(matches!(
            cache.check(&p, Some(token.as_bytes()), NOW + 161, &mut fwd),
            Verdict::Deny(Denial {
                reason: Reason::Expired,
                ..
            })
        ));
        assert_eq!(cache.stats().verifications, 4);
    }

    #[test]
    fn cache_is_bounded() {
        let p = rs256();
        let mut cache = JwtCache::new(3);
        let tokens: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    "Bearer {}",
                    rs_token(&with(&claims(), "sub", json!(format!("u{i}"))))
                )
            })
            .collect();
        let mut fwd = Vec::new();
        for t in &tokens {
            assert_eq!(
                cache.check(&p, Some(t.as_bytes()), NOW, &mut fwd),
                Verdict::Allow
            );
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.stats().evictions, 2);
        // The newest three are cached, the two oldest were evicted.
        let before = cache.stats().verifications;
        for t in &tokens[2..] {
            cache.check(&p, Some(t.as_bytes()), NOW, &mut fwd);
        }
        assert_eq!(cache.stats().verifications, before);
        cache.check(&p, Some(tokens[0].as_bytes()), NOW, &mut fwd);
        assert_eq!(cache.stats().verifications, before + 1);

        let mut off = JwtCache::new(0);
        for _ in 0..2 {
            off.check(&p, Some(tokens[0].as_bytes()), NOW, &mut fwd);
        }
        assert_eq!(off.stats().verifications, 2);
        assert!(off.is_empty());
    }

    #[test]
    fn policies_compare_by_content_and_hide_keys() {
        assert_eq!(rs256(), rs256());
        let mut other = settings(
            &[Algorithm::RS256],
            KeySource::PublicKeyFile("rsa.pem".into()),
        );
        other.audience = Some("other".into());
        assert_ne!(rs256(), policy(other, RSA_PUBLIC.as_bytes()));
        let hs = policy(
            settings(&[Algorithm::HS256], KeySource::SecretFile("/s".into())),
            SECRET,
        );
        let json = serde_json::to_string(&hs).unwrap_or_default();
        assert!(json.contains(r#""key":{"secret_file":"/s"}"#), "{json}");
        assert!(!json.contains("a-test-secret"), "{json}");
        assert!(!format!("{hs:?}").contains("a-test-secret"));
        assert!(hs.strips(b"x-user-id"));
        assert!(!hs.strips(b"authorization"));
    }
}
