//! File structs to a typed [`Config`]: defaults filled in, units and addresses parsed, references
//! resolved, and everything that would only fail later (at bind time, on the first request, or
//! silently by shadowing another route) rejected now, with the position and key path of the
//! value at fault. The first error found wins; sections are checked in file-contract order.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Spanned, Value};

use super::file::{
    invalid, position, push_key, AdminFile, AuthFile, BreakerFile, CacheFile, CorsFile, File,
    HeadersFile, HealthFile, JwtFile, OutlierFile, RateLimitFile, RespondFile, RetriesFile,
    RouteFile, ServerFile, TlsFile, UpstreamFile, UpstreamTlsFile,
};
use super::{
    AccessLog, Action, Admin, Balance, Breaker, CacheSettings, Cidr, Config, ConfigError, Driver,
    HashKey, HealthCheck, HostMatch, LimitKey, Listen, LogFormat, LogSettings, OutlierDetection,
    RateLimit, Retries, RetryOn, Route, RouteCache, Server, StatusRange, Steer, Upstream,
    UpstreamKind, Workers,
};
use crate::access::apikey::{self, ApiKeyAuth, KeySet};
use crate::access::cors::{CorsPolicy, CorsSettings};
use crate::access::headers::{editable, HeaderEdits, Side};
use crate::access::ip::{Block, CidrSet, IpFilter};
use crate::access::jwt::{self, JwtError, JwtPolicy, JwtSettings, KeySource};
use crate::access::{Auth, RoutePolicy};
use crate::http::Limits;
use crate::tls::{Certificate, Connector, Identity, ServerName, Which};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Longest DNS name (RFC 1035 §2.3.4, without the trailing dot); the route table's lookup
/// buffer is sized for it.
const MAX_HOST: usize = 253;

/// `base` is the directory relative key-file paths are resolved against (`None`: the working
/// directory).
pub(crate) fn validate(
    file: File,
    text: &str,
    origin: &str,
    base: Option<&Path>,
) -> Result<Config, ConfigError> {
    let cx = Cx { text, origin };
    let server = server(&cx, file.server, base)?;
    let admin = file
        .admin
        .map(|admin| self::admin(&cx, admin))
        .transpose()?;

    // Upstreams in file order, so that summaries and indices follow what the operator wrote.
    let mut named: Vec<(Spanned<String>, UpstreamFile)> = file.upstreams.into_iter().collect();
    named.sort_by_key(|(name, _)| name.span().start);
    let upstreams = named
        .iter()
        .map(|(name, upstream)| self::upstream(&cx, name, upstream, base))
        .collect::<Result<Vec<_>, _>>()?;

    let mut policies: Vec<(Spanned<String>, RateLimitFile)> =
        file.rate_limits.into_iter().collect();
    policies.sort_by_key(|(name, _)| name.span().start);
    let rate_limits = policies
        .iter()
        .map(|(name, policy)| rate_limit(&cx, name, policy))
        .collect::<Result<Vec<_>, _>>()?;

    let cache = file
        .cache
        .as_ref()
        .map(|cache| self::cache(&cx, cache))
        .transpose()?;
    let routes = routes(&cx, &file.routes, &upstreams, &rate_limits)?;
    for (i, spanned) in file.routes.iter().enumerate() {
        let route = &routes[i];
        if let (Some(_), Some(value)) = (route.cache, &spanned.get_ref().cache) {
            if cache.is_none() {
                return Err(cx.at(
                    value,
                    format!("routes[{i}].cache"),
                    "needs a [cache] section (its memory and max_object)",
                ));
            }
            if !matches!(route.action, Action::Proxy { .. }) {
                return Err(cx.at(
                    value,
                    format!("routes[{i}].cache"),
                    "only applies to routes with an `upstream`",
                ));
            }
        }
    }
    let mut route_policies = Vec::with_capacity(routes.len());
    for (i, (spanned, route)) in file.routes.iter().zip(&routes).enumerate() {
        let proxies = matches!(route.action, Action::Proxy { .. });
        route_policies.push(route_policy(
            &cx,
            spanned,
            &format!("routes[{i}]"),
            base,
            proxies,
        )?);
    }
    let log = match &file.log {
        None => LogSettings {
            access: AccessLog::Off,
            format: LogFormat::Json,
        },
        Some(log) => LogSettings {
            access: match log.access.as_ref().map(|a| (a, a.get_ref().as_str())) {
                None | Some((_, "off")) => AccessLog::Off,
                Some((_, "stdout")) => AccessLog::Stdout,
                Some((_, path)) if path.starts_with('/') => AccessLog::File(path.into()),
                Some((value, _)) => {
                    return Err(cx.at(
                        value,
                        "log.access",
                        "must be \"off\", \"stdout\" or an absolute file path",
                    ))
                }
            },
            format: log.format.unwrap_or(LogFormat::Json),
        },
    };
    Ok(Config {
        server,
        admin,
        upstreams,
        routes,
        rate_limits,
        cache,
        log,
        route_policies,
    })
}

/// A list of address blocks (`key[i]` names a bad one).
fn cidr_set(cx: &Cx, list: &[Spanned<String>], key: &str) -> Result<CidrSet, ConfigError> {
    let mut blocks = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let block = Block::parse(text.get_ref())
            .map_err(|e| cx.at(text, format!("{key}[{i}]"), e.to_string()))?;
        blocks.push(block);
    }
    Ok(CidrSet::new(blocks))
}

/// A key file's path: relative ones are relative to the config file's directory.
fn resolve(base: Option<&Path>, path: &str) -> PathBuf {
    match base {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    }
}

/// The access rules of one route (`key` is `routes[i]`).
fn route_policy(
    cx: &Cx,
    spanned: &Spanned<RouteFile>,
    key: &str,
    base: Option<&Path>,
    proxies: bool,
) -> Result<RoutePolicy, ConfigError> {
    let file = spanned.get_ref();
    let field = |f: &str| format!("{key}.{f}");
    let ip = match &file.ip {
        None => IpFilter::default(),
        Some(ip) => IpFilter {
            allow: cidr_set(cx, &ip.allow, &field("ip.allow"))?,
            deny: cidr_set(cx, &ip.deny, &field("ip.deny"))?,
        },
    };
    let cors = match &file.cors {
        None => None,
        Some(c) => Some(cors(cx, c, &field("cors"))?),
    };
    let auth = match &file.auth {
        None => None,
        Some(a) => Some(auth(cx, spanned, a, &field("auth"), base)?),
    };
    let request_headers = match &file.request_headers {
        None => HeaderEdits::default(),
        Some(_) if !proxies => {
            return Err(cx.at(
                spanned,
                field("request_headers"),
                "only applies to routes with an `upstream`",
            ))
        }
        Some(h) => header_edits(cx, h, Side::Request, &field("request_headers"))?,
    };
    let response_headers = match &file.response_headers {
        None => HeaderEdits::default(),
        Some(h) => header_edits(cx, h, Side::Response, &field("response_headers"))?,
    };
    Ok(RoutePolicy {
        ip,
        cors,
        auth,
        request_headers,
        response_headers,
    })
}

fn cors(cx: &Cx, file: &CorsFile, key: &str) -> Result<CorsPolicy, ConfigError> {
    let strings = |list: &[Spanned<String>]| -> Vec<String> {
        list.iter().map(|s| s.get_ref().clone()).collect()
    };
    let max_age = match &file.max_age {
        None => None,
        Some(value) => Some(duration(
            cx,
            Some(value),
            &format!("{key}.max_age"),
            Duration::ZERO,
            Zero::Allowed,
        )?),
    };
    let settings = CorsSettings {
        origins: strings(file.origins.get_ref()),
        methods: strings(&file.methods),
        headers: strings(&file.headers),
        expose_headers: strings(&file.expose_headers),
        max_age,
        credentials: file.credentials.as_ref().is_some_and(|c| *c.get_ref()),
    };
    CorsPolicy::new(settings).map_err(|e| {
        let (list, whole): (&[Spanned<String>], usize) = match e.field {
            "origins" => (file.origins.get_ref(), file.origins.span().start),
            "methods" => (&file.methods, 0),
            "headers" => (&file.headers, 0),
            "expose_headers" => (&file.expose_headers, 0),
            _ => (&[], file.credentials.as_ref().map_or(0, |c| c.span().start)),
        };
        match e.index.and_then(|i| Some((i, list.get(i)?))) {
            Some((i, item)) => cx.at(item, format!("{key}.{}[{i}]", e.field), e.message),
            None => cx.error(whole, format!("{key}.{}", e.field), e.message),
        }
    })
}

fn auth(
    cx: &Cx,
    route: &Spanned<RouteFile>,
    file: &AuthFile,
    key: &str,
    base: Option<&Path>,
) -> Result<Auth, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    match (&file.api_keys, &file.jwt) {
        (Some(path), None) => {
            let header = match &file.header {
                None => apikey::DEFAULT_HEADER.to_string(),
                Some(h) if is_token(h.get_ref()) => h.get_ref().clone(),
                Some(h) => return Err(cx.at(h, field("header"), "is not a header name")),
            };
            let forward_as = match &file.forward_as {
                None => None,
                Some(f) => {
                    let name = f.get_ref();
                    if !is_token(name) {
                        return Err(cx.at(f, field("forward_as"), "is not a header name"));
                    }
                    if !editable(Side::Request, &name.to_ascii_lowercase()) {
                        return Err(cx.at(
                            f,
                            field("forward_as"),
                            format!("`{name}` is managed by the gateway; pick another header"),
                        ));
                    }
                    if name.eq_ignore_ascii_case(&header) {
                        return Err(cx.at(
                            f,
                            field("forward_as"),
                            "must differ from `header` (the key itself never goes upstream)",
                        ));
                    }
                    Some(name.clone())
                }
            };
            let resolved = resolve(base, path.get_ref());
            let keys = KeySet::load(&resolved)
                .map_err(|e| cx.at(path, field("api_keys"), e.to_string()))?;
            Ok(Auth::ApiKeys(ApiKeyAuth::new(
                resolved, header, forward_as, keys,
            )))
        }
        (None, Some(jwt)) => {
            for (name, value) in [("header", &file.header), ("forward_as", &file.forward_as)] {
                if let Some(value) = value {
                    return Err(cx.at(
                        value,
                        field(name),
                        "only applies with `api_keys` (JWT claims go upstream through `jwt.claims_to_headers`)",
                    ));
                }
            }
            Ok(Auth::Jwt(jwt_policy(cx, jwt, &field("jwt"), base)?))
        }
        (Some(path), Some(_)) => Err(cx.at(
            path,
            field("api_keys"),
            "cannot be combined with `jwt`: a route takes one kind of credential",
        )),
        (None, None) => Err(cx.at(route, key, "needs `api_keys = \"PATH\"` or `jwt = { ... }`")),
    }
}

fn jwt_policy(
    cx: &Cx,
    file: &JwtFile,
    key: &str,
    base: Option<&Path>,
) -> Result<JwtPolicy, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    let mut algorithms = Vec::with_capacity(file.algorithms.get_ref().len());
    for (i, name) in file.algorithms.get_ref().iter().enumerate() {
        let Some(alg) = jwt::parse_algorithm(name.get_ref()) else {
            let message = if name.get_ref().eq_ignore_ascii_case("none") {
                "`none` means unsigned tokens, which are never accepted".to_string()
            } else {
                format!(
                    "`{}` is not a JWS algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)",
                    name.get_ref()
                )
            };
            return Err(cx.at(name, format!("{key}.algorithms[{i}]"), message));
        };
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }

    let sources = [
        ("secret_file", &file.secret_file),
        ("public_key_file", &file.public_key_file),
        ("jwks_file", &file.jwks_file),
    ];
    let mut given = sources
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v)));
    let (source_name, path) = match (given.next(), given.next()) {
        (Some(one), None) => one,
        (None, _) => {
            return Err(cx.at(
                &file.algorithms,
                key,
                "needs a key: `secret_file`, `public_key_file` or `jwks_file`",
            ))
        }
        (Some(_), Some((name, value))) => {
            return Err(cx.at(
                value,
                field(name),
                "only one of `secret_file`, `public_key_file` and `jwks_file` may be given",
            ))
        }
    };
    let resolved = resolve(base, path.get_ref());
    let source = match source_name {
        "secret_file" => KeySource::SecretFile(resolved),
        "public_key_file" => KeySource::PublicKeyFile(resolved),
        _ => KeySource::JwksFile(resolved),
    };

    let non_empty = |value: &Option<Spanned<String>>, name: &str| match value {
        None => Ok(None),
        Some(v) if v.get_ref().is_empty() => Err(cx.at(v, field(name), "must not be empty")),
        Some(v) => Ok(Some(v.get_ref().clone())),
    };
    let issuer = non_empty(&file.issuer, "issuer")?;
    let audience = non_empty(&file.audience, "audience")?;
    let leeway = duration(
        cx,
        file.leeway.as_ref(),
        &field("leeway"),
        jwt::DEFAULT_LEEWAY,
        Zero::Allowed,
    )?;
    let mut claims: Vec<(&Spanned<String>, &Spanned<String>)> =
        file.claims_to_headers.iter().collect();
    claims.sort_by_key(|(claim, _)| claim.span().start);
    let settings = JwtSettings {
        algorithms,
        key: source,
        issuer,
        audience,
        leeway,
        required_scopes: file
            .required_scopes
            .iter()
            .map(|s| s.get_ref().clone())
            .collect(),
        claims_to_headers: claims
            .iter()
            .map(|(c, h)| (c.get_ref().clone(), h.get_ref().clone()))
            .collect(),
    };
    JwtPolicy::load(settings).map_err(|e| match e {
        JwtError::Algorithms(message) => cx.at(&file.algorithms, field("algorithms"), message),
        JwtError::Key { .. } | JwtError::Io { .. } => {
            cx.at(path, field(source_name), e.to_string())
        }
        JwtError::ClaimHeader { claim, message } => {
            let mut k = field("claims_to_headers");
            push_key(&mut k, &claim);
            let at = claims
                .iter()
                .find(|(c, _)| c.get_ref() == &claim)
                .map_or(0, |(_, h)| h.span().start);
            cx.error(at, k, message)
        }
        JwtError::Scope { index, message } => {
            let at = file
                .required_scopes
                .get(index)
                .map_or(0, |s| s.span().start);
            cx.error(at, format!("{key}.required_scopes[{index}]"), message)
        }
    })
}

fn header_edits(
    cx: &Cx,
    file: &HeadersFile,
    side: Side,
    key: &str,
) -> Result<HeaderEdits, ConfigError> {
    let mut set: Vec<(&Spanned<String>, &Spanned<String>)> = file.set.iter().collect();
    set.sort_by_key(|(name, _)| name.span().start);
    let pairs = set
        .iter()
        .map(|(n, v)| (n.get_ref().clone(), v.get_ref().clone()))
        .collect();
    let remove = file.remove.iter().map(|r| r.get_ref().clone()).collect();
    HeaderEdits::new(side, pairs, remove).map_err(|e| {
        if e.field == "set" {
            let mut k = format!("{key}.set");
            push_key(&mut k, &e.name);
            let at = set
                .iter()
                .find(|(n, _)| n.get_ref() == &e.name)
                .map_or(0, |(n, v)| {
                    if e.in_value {
                        v.span().start
                    } else {
                        n.span().start
                    }
                });
            cx.error(at, k, e.message)
        } else {
            match file
                .remove
                .iter()
                .enumerate()
                .find(|(_, r)| r.get_ref() == &e.name)
            {
                Some((i, r)) => cx.at(r, format!("{key}.remove[{i}]"), e.message),
                None => cx.error(0, format!("{key}.remove"), e.message),
            }
        }
    })
}

fn cache(cx: &Cx, file: &CacheFile) -> Result<CacheSettings, ConfigError> {
    let memory = size(cx, file.memory.as_ref(), "cache.memory", 256 * MIB)?;
    let max_object = size(cx, file.max_object.as_ref(), "cache.max_object", MIB)?;
    if max_object == 0 || max_object > memory {
        let at = file.max_object.as_ref().map_or(0, |v| v.span().start);
        return Err(cx.error(
            at,
            "cache.max_object",
            "must be between 1 byte and cache.memory",
        ));
    }
    let mut purge_allow = Vec::with_capacity(file.purge_allow.len());
    for (i, block) in file.purge_allow.iter().enumerate() {
        let cidr = parse_cidr(block.get_ref()).ok_or_else(|| {
            cx.at(
                block,
                format!("cache.purge_allow[{i}]"),
                "must be an address block such as \"127.0.0.1/32\" or \"::1/128\"",
            )
        })?;
        purge_allow.push(cidr);
    }
    Ok(CacheSettings {
        memory,
        max_object,
        purge_allow,
    })
}

/// `ADDR/PREFIX`, or a bare address (a block of one).
fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
        None => max,
    };
    Some(Cidr { addr, prefix })
}

/// `cache = true | false | { ttl = "60s" }` on a route.
fn route_cache(
    cx: &Cx,
    value: &Spanned<Value>,
    key: &str,
) -> Result<Option<RouteCache>, ConfigError> {
    match value.get_ref() {
        Value::Boolean(false) => Ok(None),
        Value::Boolean(true) => Ok(Some(RouteCache { ttl: None })),
        Value::Table(table) => {
            if let Some(other) = table.keys().find(|k| k.as_str() != "ttl") {
                return Err(cx.at(value, format!("{key}.{other}"), "unknown key (only `ttl`)"));
            }
            let ttl = match table.get("ttl") {
                None => None,
                Some(Value::String(s)) => {
                    Some(parse_duration(s).map_err(|m| cx.at(value, format!("{key}.ttl"), m))?)
                }
                Some(_) => {
                    return Err(cx.at(
                        value,
                        format!("{key}.ttl"),
                        "expected a duration such as \"60s\"",
                    ))
                }
            };
            Ok(Some(RouteCache { ttl }))
        }
        _ => Err(cx.at(value, key, "must be true, false or { ttl = \"60s\" }")),
    }
}

fn rate_limit(
    cx: &Cx,
    name: &Spanned<String>,
    file: &RateLimitFile,
) -> Result<RateLimit, ConfigError> {
    let field = |f: &str| format!("rate_limits.{}.{f}", name.get_ref());
    let key = match file.key.get_ref().as_str() {
        "client_ip" => LimitKey::ClientIp,
        "route" => LimitKey::Route,
        "client_ip+route" => LimitKey::ClientIpAndRoute,
        other => match other.strip_prefix("header:") {
            Some(header) if is_token(header) => LimitKey::Header(header.to_ascii_lowercase()),
            _ => {
                return Err(cx.at(
                    &file.key,
                    field("key"),
                    "must be \"client_ip\", \"header:NAME\", \"route\" or \"client_ip+route\"",
                ))
            }
        },
    };
    let (rate, per) = parse_rate(file.rate.get_ref())
        .map_err(|message| cx.at(&file.rate, field("rate"), message))?;
    let burst = positive(cx, &file.burst, &field("burst"))? as u64;
    let max_keys = match &file.max_keys {
        None => 100_000,
        Some(n) => positive(cx, n, &field("max_keys"))?,
    };
    Ok(RateLimit {
        name: name.get_ref().clone(),
        key,
        rate,
        per,
        burst,
        max_keys,
        headers: file.headers.unwrap_or(false),
    })
}

/// `"100/s"`, `"6000/m"`, `"10/h"`: a positive count per second, minute or hour.
fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let expected = "must look like \"100/s\", \"6000/m\" or \"10/h\"";
    let (count, unit) = text.split_once('/').ok_or_else(|| expected.to_string())?;
    let count: u64 = count
        .trim()
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| expected.to_string())?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(expected.to_string()),
    };
    Ok((count, per))
}

/// What every error needs besides its own offset, key and message.
struct Cx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Cx<'_> {
    fn error(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        invalid(self.text, self.origin, offset, key.into(), message.into())
    }

    fn at<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span().start, key, message)
    }
}

fn server(cx: &Cx, file: Option<ServerFile>, base: Option<&Path>) -> Result<Server, ConfigError> {
    let Some(file) = file else {
        return Err(cx.error(
            0,
            "server",
            "missing [server] section (it needs at least `listen`)",
        ));
    };
    if file.listen.get_ref().is_empty() {
        return Err(cx.at(&file.listen, "server.listen", "needs at least one address"));
    }
    let tls = tls_certificates(cx, &file.tls, base)?;
    let mut listen: Vec<Listen> = Vec::with_capacity(file.listen.get_ref().len());
    for (i, item) in file.listen.get_ref().iter().enumerate() {
        let key = format!("server.listen[{i}]");
        let l = listen_item(cx, item, &key)?;
        // Port 0 twice is two listeners on ports the kernel picks.
        if l.addr.port() != 0 && listen.iter().any(|other| other.addr == l.addr) {
            return Err(cx.at(item, key, format!("{} is listed twice", l.addr)));
        }
        if l.tls && tls.is_empty() {
            return Err(cx.at(
                item,
                key,
                "a TLS listener needs a certificate: add a [[server.tls]] entry with `cert` and `key`",
            ));
        }
        listen.push(l);
    }

    let workers = match &file.workers {
        None => Workers::Auto,
        Some(value) => workers(value.get_ref()).ok_or_else(|| {
            cx.at(
                value,
                "server.workers",
                "must be \"auto\" or a number of at least 1",
            )
        })?,
    };

    let max_connections = match &file.max_connections {
        None => 16_384,
        Some(n) => positive(cx, n, "server.max_connections")?,
    };

    let defaults = Limits::DEFAULT;
    let max_head = size(
        cx,
        file.max_head.as_ref(),
        "server.max_head",
        defaults.max_head as u64,
    )?;
    // Head offsets are 32-bit (`http::Span`).
    if max_head == 0 || max_head > u64::from(u32::MAX) {
        let at = file.max_head.as_ref().map_or(0, |v| v.span().start);
        return Err(cx.error(
            at,
            "server.max_head",
            "must be at least 1 byte and below 4GiB",
        ));
    }
    // The request line is part of the head, so a longer limit could never apply; the defaults
    // shrink to fit a small max_head instead of failing on a key the operator did not write.
    let max_request_line = match &file.max_request_line {
        None => (defaults.max_request_line as u64).min(max_head),
        Some(value) => {
            let n = size(cx, Some(value), "server.max_request_line", 0)?;
            if n == 0 || n > max_head {
                return Err(cx.at(
                    value,
                    "server.max_request_line",
                    format!("must be at least 1 byte and at most max_head ({max_head} bytes), which includes it"),
                ));
            }
            n
        }
    };
    // Room for this many fields is reserved per connection; a field line takes at least four
    // bytes ("a:\r\n"), so more than max_head / 4 could never arrive.
    let most_headers = usize::try_from(max_head / 4).unwrap_or(usize::MAX);
    let max_headers = match &file.max_headers {
        None => defaults.max_headers.min(most_headers),
        Some(n) => {
            let count = positive(cx, n, "server.max_headers")?;
            if count > most_headers {
                return Err(cx.at(
                    n,
                    "server.max_headers",
                    format!("must be at most max_head / 4 ({most_headers}): no more fields fit in the head"),
                ));
            }
            count
        }
    };

    Ok(Server {
        listen,
        workers,
        pin: file.pin.unwrap_or(true),
        driver: file.driver.unwrap_or(Driver::Auto),
        drain_timeout: duration(
            cx,
            file.drain_timeout.as_ref(),
            "server.drain_timeout",
            Duration::from_secs(30),
            Zero::Allowed,
        )?,
        max_connections,
        header_timeout: duration(
            cx,
            file.header_timeout.as_ref(),
            "server.header_timeout",
            Duration::from_secs(10),
            Zero::Rejected,
        )?,
        keepalive_timeout: duration(
            cx,
            file.keepalive_timeout.as_ref(),
            "server.keepalive_timeout",
            Duration::from_secs(60),
            Zero::Rejected,
        )?,
        max_body: size(cx, file.max_body.as_ref(), "server.max_body", GIB)?,
        limits: Limits {
            // Lossless: both are at most max_head, which is below u32::MAX.
            max_request_line: max_request_line as usize,
            max_head: max_head as usize,
            max_headers,
            ..defaults
        },
        tls,
        steer: file.steer.unwrap_or(Steer::None),
        ip: IpFilter {
            allow: cidr_set(cx, &file.ip_allow, "server.ip_allow")?,
            deny: cidr_set(cx, &file.ip_deny, "server.ip_deny")?,
        },
    })
}

/// `"IP:port"` or `{ addr = "IP:port", tls = true }`. toml gives no spans inside a `Value`,
/// so errors point at the item and name the key.
fn listen_item(cx: &Cx, item: &Spanned<Value>, key: &str) -> Result<Listen, ConfigError> {
    let addr = |text: &str, key: &str| {
        text.parse::<SocketAddr>().map_err(|_| {
            cx.at(
                item,
                key,
                format!("`{text}` is not an IP:port address such as \"127.0.0.1:8080\" or \"[::1]:8080\""),
            )
        })
    };
    match item.get_ref() {
        Value::String(text) => Ok(Listen {
            addr: addr(text, key)?,
            tls: false,
        }),
        Value::Table(table) => {
            if let Some(other) = table
                .keys()
                .find(|k| !["addr", "tls"].contains(&k.as_str()))
            {
                return Err(cx.at(
                    item,
                    format!("{key}.{other}"),
                    "unknown key (a listener has `addr` and `tls`)",
                ));
            }
            let addr = match table.get("addr") {
                Some(Value::String(text)) => addr(text, &format!("{key}.addr"))?,
                Some(_) => {
                    return Err(cx.at(
                        item,
                        format!("{key}.addr"),
                        "expected an address string such as \"0.0.0.0:443\"",
                    ))
                }
                None => return Err(cx.at(item, key, "needs `addr = \"IP:port\"`")),
            };
            let tls = match table.get("tls") {
                None => false,
                Some(Value::Boolean(b)) => *b,
                Some(_) => return Err(cx.at(item, format!("{key}.tls"), "must be true or false")),
            };
            Ok(Listen { addr, tls })
        }
        other => Err(cx.at(
            item,
            key,
            format!(
                "expected \"IP:port\" or {{ addr = \"IP:port\", tls = true }}, found a {}",
                other.type_str()
            ),
        )),
    }
}

/// `[[server.tls]]`: each entry's files are read and checked now (so a reload re-reads them
/// and a broken one keeps the running config); one entry at most may leave out `server_names`,
/// and no name may be claimed twice.
fn tls_certificates(
    cx: &Cx,
    files: &[Spanned<TlsFile>],
    base: Option<&Path>,
) -> Result<Vec<Certificate>, ConfigError> {
    let mut certs: Vec<Certificate> = Vec::with_capacity(files.len());
    let mut claimed: HashMap<String, usize> = HashMap::new();
    let mut default: Option<usize> = None;
    for (i, spanned) in files.iter().enumerate() {
        let key = format!("server.tls[{i}]");
        let file = spanned.get_ref();
        let mut server_names = Vec::new();
        match &file.server_names {
            None => {
                if let Some(other) = default {
                    return Err(cx.at(
                        spanned,
                        key,
                        format!("only one entry may leave out `server_names` (the default certificate); server.tls[{other}] already does"),
                    ));
                }
                default = Some(i);
            }
            Some(list) if list.get_ref().is_empty() => {
                return Err(cx.at(
                    list,
                    format!("{key}.server_names"),
                    "must not be empty (leave it out for the default certificate)",
                ))
            }
            Some(list) => {
                for (j, name) in list.get_ref().iter().enumerate() {
                    let name_key = format!("{key}.server_names[{j}]");
                    let parsed = match host_match(name.get_ref()) {
                        Ok(HostMatch::Exact(n)) if !n.starts_with('[') => ServerName::Exact(n),
                        Ok(HostMatch::Suffix(s)) => {
                            ServerName::Wildcard(s.trim_start_matches('.').to_string())
                        }
                        Ok(_) => {
                            return Err(cx.at(
                                name,
                                name_key,
                                "must be a DNS name (clients send no IP address in SNI)",
                            ))
                        }
                        Err(message) => return Err(cx.at(name, name_key, message)),
                    };
                    if let Some(other) = claimed.insert(parsed.to_string(), i) {
                        return Err(cx.at(
                            name,
                            name_key,
                            format!("`{parsed}` is already served by server.tls[{other}]"),
                        ));
                    }
                    server_names.push(parsed);
                }
            }
        }
        let cert = resolve(base, file.cert.get_ref());
        let key_path = resolve(base, file.key.get_ref());
        let identity = Identity::load(&cert, &key_path).map_err(|e| match e.which() {
            Which::Cert => cx.at(&file.cert, format!("{key}.cert"), e.to_string()),
            Which::Key => cx.at(&file.key, format!("{key}.key"), e.to_string()),
        })?;
        certs.push(Certificate {
            cert,
            key: key_path,
            server_names,
            identity,
        });
    }
    Ok(certs)
}

fn workers(value: &Value) -> Option<Workers> {
    match value {
        Value::String(s) if s == "auto" => Some(Workers::Auto),
        Value::Integer(n) => usize::try_from(*n)
            .ok()
            .and_then(NonZeroUsize::new)
            .map(Workers::Count),
        _ => None,
    }
}

fn admin(cx: &Cx, file: AdminFile) -> Result<Admin, ConfigError> {
    Ok(Admin {
        listen: socket_addr(cx, &file.listen, "admin.listen")?,
    })
}

fn upstream(
    cx: &Cx,
    name: &Spanned<String>,
    file: &UpstreamFile,
    base: Option<&Path>,
) -> Result<Upstream, ConfigError> {
    let mut key = String::from("upstreams");
    push_key(&mut key, name.get_ref());
    let field = |field: &str| format!("{key}.{field}");

    let balance = match &file.balance {
        None => Balance::RoundRobin,
        Some(b) => balance(cx, b, file.hash_key.as_ref(), &field("balance"))?,
    };
    if let (Some(hash_key), false) = (
        &file.hash_key,
        matches!(balance, Balance::ConsistentHash(_)),
    ) {
        return Err(cx.at(
            hash_key,
            field("hash_key"),
            "only applies with balance = \"consistent_hash\"",
        ));
    }

    let (kind, weights) = match (&file.targets, &file.builtin) {
        (Some(targets), None) => {
            if targets.get_ref().is_empty() {
                return Err(cx.at(
                    targets,
                    field("targets"),
                    "needs at least one address (or use `builtin`)",
                ));
            }
            let mut addrs = Vec::with_capacity(targets.get_ref().len());
            let mut weights = Vec::with_capacity(targets.get_ref().len());
            for (i, target) in targets.get_ref().iter().enumerate() {
                let (addr, weight) = self::target(cx, target, &format!("{key}.targets[{i}]"))?;
                if weight.is_some_and(|w| w != 1) && balance != Balance::Weighted {
                    return Err(cx.at(
                        target,
                        format!("{key}.targets[{i}].weight"),
                        "only applies with balance = \"weighted\"",
                    ));
                }
                addrs.push(addr);
                weights.push(weight.map_or(1, |w| w as u32));
            }
            (UpstreamKind::Targets(addrs), weights)
        }
        (None, Some(builtin)) => {
            // Nothing of the resilience machinery applies to an answer made in-process.
            let remote_only = [
                ("balance", file.balance.as_ref().map(|v| v.span().start)),
                ("timeout", file.timeout.as_ref().map(|v| v.span().start)),
                ("health", file.health.as_ref().map(|h| health_span(h, name))),
                (
                    "outlier",
                    file.outlier.as_ref().map(|o| outlier_span(o, name)),
                ),
                (
                    "breaker",
                    file.breaker.as_ref().map(|b| breaker_span(b, name)),
                ),
                (
                    "retries",
                    file.retries.as_ref().map(|r| retries_span(r, name)),
                ),
                ("tls", file.tls.as_ref().map(|t| t.span().start)),
            ];
            if let Some((k, Some(at))) = remote_only.iter().find(|(_, at)| at.is_some()) {
                return Err(cx.error(*at, field(k), "only applies to upstreams with `targets`"));
            }
            (UpstreamKind::Builtin(*builtin.get_ref()), Vec::new())
        }
        (None, None) => {
            return Err(cx.at(
                name,
                key,
                "needs `targets = [\"host:port\", ...]` or `builtin = \"echo\"`",
            ));
        }
        (Some(targets), Some(_)) => {
            return Err(cx.at(
                targets,
                field("targets"),
                "cannot be combined with `builtin`: an upstream is either remote or built in",
            ));
        }
    };

    let max_idle = match &file.max_idle {
        None => 64,
        Some(n) => usize::try_from(*n.get_ref())
            .map_err(|_| cx.at(n, field("max_idle"), "must not be negative"))?,
    };
    let max_requests = match &file.max_requests {
        None => 10_000,
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                cx.at(
                    n,
                    field("max_requests"),
                    format!("must be between 1 and {}", u32::MAX),
                )
            })?,
    };
    let timeout = match &file.timeout {
        None => None,
        Some(value) => Some(duration(
            cx,
            Some(value),
            &field("timeout"),
            Duration::ZERO,
            Zero::Rejected,
        )?),
    };

    let tls = match &file.tls {
        None => None,
        Some(tls) => upstream_tls(cx, tls, &field("tls"), base)?,
    };
    if let (Some(_), Some(h)) = (&tls, &file.health) {
        return Err(cx.error(
            health_span(h, name),
            field("health"),
            "active health checks speak plain HTTP and cannot check a TLS upstream: remove `health` (`outlier` works with `tls`)",
        ));
    }

    Ok(Upstream {
        name: name.get_ref().clone(),
        kind,
        tls,
        balance,
        weights,
        connect_timeout: duration(
            cx,
            file.connect_timeout.as_ref(),
            &field("connect_timeout"),
            Duration::from_secs(1),
            Zero::Rejected,
        )?,
        read_timeout: duration(
            cx,
            file.read_timeout.as_ref(),
            &field("read_timeout"),
            Duration::from_secs(30),
            Zero::Rejected,
        )?,
        idle_timeout: duration(
            cx,
            file.idle_timeout.as_ref(),
            &field("idle_timeout"),
            Duration::from_secs(60),
            Zero::Rejected,
        )?,
        max_idle,
        max_requests,
        timeout,
        health: match &file.health {
            None => None,
            Some(h) => Some(health(cx, h, &field("health"))?),
        },
        outlier: match &file.outlier {
            None => None,
            Some(o) => Some(outlier(cx, o, &field("outlier"))?),
        },
        breaker: match &file.breaker {
            None => None,
            Some(b) => Some(breaker(cx, b, name, &field("breaker"))?),
        },
        retries: match &file.retries {
            None => None,
            Some(r) => Some(retries(cx, r, &field("retries"))?),
        },
    })
}

/// `tls = { ca = "PATH", server_name = "NAME" }`: the CA bundle is read and the client config
/// built now (a reload re-reads it); `tls = false` is no TLS.
fn upstream_tls(
    cx: &Cx,
    tls: &Spanned<UpstreamTlsFile>,
    key: &str,
    base: Option<&Path>,
) -> Result<Option<Connector>, ConfigError> {
    let table = match tls.get_ref() {
        UpstreamTlsFile::Flag(false) => return Ok(None),
        UpstreamTlsFile::Flag(true) => {
            return Err(cx.at(
                tls,
                key,
                "needs `ca`: the system's trusted roots are not available to the gateway; write `tls = { ca = \"PATH\" }` with a PEM bundle of the roots that signed the upstream's certificate",
            ))
        }
        UpstreamTlsFile::Table(table) => table,
    };
    let Some(ca) = &table.ca else {
        return Err(cx.at(
            tls,
            format!("{key}.ca"),
            "is required: a PEM bundle of the roots that signed the upstream's certificate (the system's trusted roots are not available to the gateway)",
        ));
    };
    let server_name = match &table.server_name {
        None => None,
        Some(name) => {
            crate::tls::parse_server_name(name.get_ref())
                .map_err(|e| cx.at(name, format!("{key}.server_name"), e))?;
            Some(name.get_ref().as_str())
        }
    };
    let path = resolve(base, ca.get_ref());
    Connector::load(&path, server_name)
        .map(Some)
        .map_err(|e| cx.at(ca, format!("{key}.ca"), e))
}

/// Most weight one target may have: weights add up in 64-bit counters, and a ratio beyond
/// this is no longer load balancing.
const MAX_WEIGHT: i64 = 10_000;

/// One element of `targets`: `"IP:port"` or `{ addr = "IP:port", weight = N }`.
/// toml keeps no span for values inside an inline table read as a `Value`: errors in one
/// point at the table.
fn target(
    cx: &Cx,
    value: &Spanned<Value>,
    key: &str,
) -> Result<(SocketAddr, Option<i64>), ConfigError> {
    let parse = |text: &str| {
        text.parse::<SocketAddr>().map_err(|_| {
            cx.at(
                value,
                key,
                format!(
                    "`{text}` is not an IP:port address such as \"127.0.0.1:8080\" or \"[::1]:8080\""
                ),
            )
        })
    };
    match value.get_ref() {
        Value::String(text) => Ok((parse(text)?, None)),
        Value::Table(table) => {
            if let Some(other) = table
                .keys()
                .find(|k| !["addr", "weight"].contains(&k.as_str()))
            {
                let mut k = key.to_string();
                push_key(&mut k, other);
                return Err(cx.at(value, k, "unknown key (a target has `addr` and `weight`)"));
            }
            let addr = match table.get("addr") {
                Some(Value::String(text)) => parse(text)?,
                Some(_) => {
                    return Err(cx.at(value, format!("{key}.addr"), "must be a string \"IP:port\""))
                }
                None => return Err(cx.at(value, key, "needs `addr = \"IP:port\"`")),
            };
            let weight = match table.get("weight") {
                None => None,
                Some(Value::Integer(w)) if (1..=MAX_WEIGHT).contains(w) => Some(*w),
                Some(_) => {
                    return Err(cx.at(
                        value,
                        format!("{key}.weight"),
                        format!("must be a whole number between 1 and {MAX_WEIGHT}"),
                    ))
                }
            };
            Ok((addr, weight))
        }
        other => Err(cx.at(
            value,
            key,
            format!(
                "invalid type: found {}, expected \"IP:port\" or {{ addr = \"IP:port\", weight = N }}",
                other.type_str()
            ),
        )),
    }
}

/// `balance = "..."`, with `hash_key` for `consistent_hash`.
fn balance(
    cx: &Cx,
    value: &Spanned<String>,
    hash_key: Option<&Spanned<String>>,
    key: &str,
) -> Result<Balance, ConfigError> {
    Ok(match value.get_ref().as_str() {
        "round_robin" => Balance::RoundRobin,
        "weighted" => Balance::Weighted,
        "least_conn" => Balance::LeastConn,
        "p2c_ewma" => Balance::P2cEwma,
        "consistent_hash" => {
            let hash_key_path = key.replace(".balance", ".hash_key");
            Balance::ConsistentHash(match hash_key {
                None => HashKey::ClientIp,
                Some(k) => match k.get_ref().as_str() {
                    "client_ip" => HashKey::ClientIp,
                    "path" => HashKey::Path,
                    other => match other.strip_prefix("header:") {
                        Some(name) if is_token(name) => HashKey::Header(name.to_ascii_lowercase()),
                        _ => {
                            return Err(cx.at(
                                k,
                                hash_key_path,
                                "must be \"client_ip\", \"header:NAME\" or \"path\"",
                            ))
                        }
                    },
                },
            })
        }
        other => {
            return Err(cx.at(
                value,
                key,
                format!("unknown policy `{other}` (round_robin, weighted, least_conn, p2c_ewma or consistent_hash)"),
            ))
        }
    })
}

/// Where a table without a span of its own is reported: its first key, or else the upstream.
fn first_span(spans: &[Option<usize>], name: &Spanned<String>) -> usize {
    spans
        .iter()
        .flatten()
        .min()
        .copied()
        .unwrap_or(name.span().start)
}

fn health_span(h: &HealthFile, name: &Spanned<String>) -> usize {
    let start = |v: &Option<Spanned<Value>>| v.as_ref().map(|v| v.span().start);
    let int = |v: &Option<Spanned<i64>>| v.as_ref().map(|v| v.span().start);
    first_span(
        &[
            h.path.as_ref().map(|v| v.span().start),
            start(&h.interval),
            start(&h.timeout),
            int(&h.healthy),
            int(&h.unhealthy),
            start(&h.expect_status),
        ],
        name,
    )
}

fn outlier_span(o: &OutlierFile, name: &Spanned<String>) -> usize {
    first_span(
        &[
            o.consecutive_failures.as_ref().map(|v| v.span().start),
            o.base_ejection.as_ref().map(|v| v.span().start),
            o.max_ejection.as_ref().map(|v| v.span().start),
            o.max_ejected_percent.as_ref().map(|v| v.span().start),
        ],
        name,
    )
}

fn breaker_span(b: &BreakerFile, name: &Spanned<String>) -> usize {
    first_span(
        &[
            b.max_connections.as_ref().map(|v| v.span().start),
            b.max_pending.as_ref().map(|v| v.span().start),
            b.max_requests.as_ref().map(|v| v.span().start),
        ],
        name,
    )
}

fn retries_span(r: &RetriesFile, name: &Spanned<String>) -> usize {
    first_span(
        &[
            r.attempts.as_ref().map(|v| v.span().start),
            r.on.as_ref().map(|v| v.span().start),
            r.budget.as_ref().map(|v| v.span().start),
            r.min_retries.as_ref().map(|v| v.span().start),
            r.per_try_timeout.as_ref().map(|v| v.span().start),
        ],
        name,
    )
}

/// A count between `min` and `max`, or `default` when absent.
fn count(
    cx: &Cx,
    n: Option<&Spanned<i64>>,
    key: &str,
    default: u32,
    (min, max): (u32, u32),
) -> Result<u32, ConfigError> {
    let Some(n) = n else {
        return Ok(default);
    };
    u32::try_from(*n.get_ref())
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| cx.at(n, key, format!("must be between {min} and {max}")))
}

fn health(cx: &Cx, file: &HealthFile, key: &str) -> Result<HealthCheck, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    let path = match &file.path {
        None => "/healthz".to_string(),
        Some(p) => {
            let text = p.get_ref();
            if !text.starts_with('/') || !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(cx.at(
                    p,
                    field("path"),
                    "must start with '/' and be visible ASCII without spaces",
                ));
            }
            text.clone()
        }
    };
    let interval = duration(
        cx,
        file.interval.as_ref(),
        &field("interval"),
        Duration::from_secs(2),
        Zero::Rejected,
    )?;
    let timeout = duration(
        cx,
        file.timeout.as_ref(),
        &field("timeout"),
        Duration::from_secs(1),
        Zero::Rejected,
    )?;
    let expect_status = match &file.expect_status {
        None => StatusRange {
            first: 200,
            last: 399,
        },
        Some(value) => status_range(value.get_ref()).ok_or_else(|| {
            cx.at(
                value,
                field("expect_status"),
                "must be a status such as \"200\" or a range such as \"200-399\" (100..599)",
            )
        })?,
    };
    Ok(HealthCheck {
        path,
        interval,
        timeout,
        healthy: count(cx, file.healthy.as_ref(), &field("healthy"), 2, (1, 1000))?,
        unhealthy: count(
            cx,
            file.unhealthy.as_ref(),
            &field("unhealthy"),
            3,
            (1, 1000),
        )?,
        expect_status,
    })
}

/// `"200-399"`, `"204"` or `204`.
fn status_range(value: &Value) -> Option<StatusRange> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let (first, last) = match value {
        Value::Integer(n) => {
            let c = u16::try_from(*n).ok().filter(|c| (100..=599).contains(c))?;
            (c, c)
        }
        Value::String(s) => match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(s)?, code(s)?),
        },
        _ => return None,
    };
    (first <= last).then_some(StatusRange { first, last })
}

fn outlier(cx: &Cx, file: &OutlierFile, key: &str) -> Result<OutlierDetection, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    let base_ejection = duration(
        cx,
        file.base_ejection.as_ref(),
        &field("base_ejection"),
        Duration::from_secs(30),
        Zero::Rejected,
    )?;
    let max_ejection = duration(
        cx,
        file.max_ejection.as_ref(),
        &field("max_ejection"),
        base_ejection.max(Duration::from_secs(300)),
        Zero::Rejected,
    )?;
    if max_ejection < base_ejection {
        if let Some(value) = &file.max_ejection {
            return Err(cx.at(
                value,
                field("max_ejection"),
                "must be at least base_ejection",
            ));
        }
    }
    Ok(OutlierDetection {
        consecutive_failures: count(
            cx,
            file.consecutive_failures.as_ref(),
            &field("consecutive_failures"),
            5,
            (1, 1000),
        )?,
        base_ejection,
        max_ejection,
        max_ejected_percent: count(
            cx,
            file.max_ejected_percent.as_ref(),
            &field("max_ejected_percent"),
            50,
            (0, 100),
        )?,
    })
}

/// Requests that may wait for a connection when `max_connections` is set and `max_pending`
/// is not (Envoy's default).
const DEFAULT_MAX_PENDING: u32 = 1024;

fn breaker(
    cx: &Cx,
    file: &BreakerFile,
    name: &Spanned<String>,
    key: &str,
) -> Result<Breaker, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    let limit = |n: &Option<Spanned<i64>>, f: &str| -> Result<Option<u32>, ConfigError> {
        n.as_ref()
            .map(|n| count(cx, Some(n), &field(f), 1, (1, u32::MAX)))
            .transpose()
    };
    let max_connections = limit(&file.max_connections, "max_connections")?;
    let max_requests = limit(&file.max_requests, "max_requests")?;
    let max_pending = match (&file.max_pending, max_connections) {
        (Some(n), None) => {
            return Err(cx.at(
                n,
                field("max_pending"),
                "only applies with max_connections (requests wait only for a connection)",
            ))
        }
        (Some(n), Some(_)) => count(cx, Some(n), &field("max_pending"), 0, (0, u32::MAX))?,
        (None, _) => DEFAULT_MAX_PENDING,
    };
    if max_connections.is_none() && max_requests.is_none() {
        return Err(cx.error(
            breaker_span(file, name),
            key,
            "needs max_connections or max_requests",
        ));
    }
    Ok(Breaker {
        max_connections,
        max_pending,
        max_requests,
    })
}

fn retries(cx: &Cx, file: &RetriesFile, key: &str) -> Result<Retries, ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    let on = match &file.on {
        None => RetryOn {
            connect_failure: true,
            reset: true,
            ..RetryOn::default()
        },
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.at(list, field("on"), "must name at least one condition"));
            }
            let mut on = RetryOn::default();
            for (i, item) in list.get_ref().iter().enumerate() {
                match item.get_ref().as_str() {
                    "connect-failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "timeout" => on.timeout = true,
                    "5xx" => on.statuses.extend(500..=599),
                    other => match other.parse::<u16>() {
                        Ok(code) if (500..=599).contains(&code) => on.statuses.push(code),
                        _ => {
                            return Err(cx.at(
                                item,
                                format!("{key}.on[{i}]"),
                                "must be \"connect-failure\", \"reset\", \"timeout\", a status from \"500\" to \"599\", or \"5xx\"",
                            ))
                        }
                    },
                }
            }
            on.statuses.sort_unstable();
            on.statuses.dedup();
            on
        }
    };
    let budget_permille = match &file.budget {
        None => 200,
        Some(b) => parse_percent(b.get_ref()).ok_or_else(|| {
            cx.at(
                b,
                field("budget"),
                "must be a share such as \"20%\" or \"12.5%\" (0% to 100%)",
            )
        })?,
    };
    let per_try_timeout = match &file.per_try_timeout {
        None => None,
        Some(value) => Some(duration(
            cx,
            Some(value),
            &field("per_try_timeout"),
            Duration::ZERO,
            Zero::Rejected,
        )?),
    };
    Ok(Retries {
        attempts: count(cx, file.attempts.as_ref(), &field("attempts"), 2, (1, 10))?,
        on,
        budget_permille,
        min_retries: count(
            cx,
            file.min_retries.as_ref(),
            &field("min_retries"),
            3,
            (0, 1_000_000),
        )?,
        per_try_timeout,
    })
}

/// `"20%"` → 200, `"12.5%"` → 125: per mille, at most one decimal, 0% to 100%.
fn parse_percent(text: &str) -> Option<u32> {
    let number = text.strip_suffix('%')?;
    let (whole, tenth) = match number.split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some(_) => return None,
        None => (number, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(tenth) {
        return None;
    }
    let permille = whole.parse::<u32>().ok()?.checked_mul(10)? + tenth.parse::<u32>().ok()?;
    (permille <= 1000).then_some(permille)
}

fn routes(
    cx: &Cx,
    files: &[Spanned<RouteFile>],
    upstreams: &[Upstream],
    rate_limits: &[RateLimit],
) -> Result<Vec<Route>, ConfigError> {
    let by_name: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, upstream)| (upstream.name.as_str(), i))
        .collect();
    // Routes that an identical (host, path_prefix) already claims, to find duplicates.
    let mut claimed: HashMap<(HostMatch, String), Vec<usize>> = HashMap::new();
    let mut routes: Vec<Route> = Vec::with_capacity(files.len());

    for (i, spanned) in files.iter().enumerate() {
        let key = format!("routes[{i}]");
        let mut route = self::route(cx, spanned, &key, &by_name)?;
        if let Some(name) = &spanned.get_ref().rate_limit {
            let index = rate_limits.iter().position(|p| &p.name == name.get_ref());
            route.rate_limit = Some(index.ok_or_else(|| {
                cx.at(
                    name,
                    format!("{key}.rate_limit"),
                    format!("no rate limit named `{}`", name.get_ref()),
                )
            })?);
        }
        let earlier = claimed
            .entry((route.host.clone(), route.path_prefix.clone()))
            .or_default();
        if let Some(&other) = earlier
            .iter()
            .find(|&&j| methods_overlap(&routes[j].methods, &route.methods))
        {
            let (line, _) = position(cx.text, files[other].span().start);
            return Err(cx.at(
                spanned,
                key,
                format!("duplicates routes[{other}] (line {line}): same host and path_prefix, and their methods overlap"),
            ));
        }
        earlier.push(i);
        routes.push(route);
    }
    Ok(routes)
}

fn route(
    cx: &Cx,
    spanned: &Spanned<RouteFile>,
    key: &str,
    upstreams: &HashMap<&str, usize>,
) -> Result<Route, ConfigError> {
    let file = spanned.get_ref();
    let field = |field: &str| format!("{key}.{field}");

    let host = match &file.host {
        None => HostMatch::Any,
        Some(host) => {
            host_match(host.get_ref()).map_err(|message| cx.at(host, field("host"), message))?
        }
    };

    let prefix = file.path_prefix.get_ref();
    if !prefix.starts_with('/') {
        return Err(cx.at(
            &file.path_prefix,
            field("path_prefix"),
            "must start with '/'",
        ));
    }
    // A request target holds only visible ASCII; a prefix with anything else never matches.
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(cx.at(
            &file.path_prefix,
            field("path_prefix"),
            "must be visible ASCII without spaces (percent-encode the rest)",
        ));
    }

    let methods = match &file.methods {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(cx.at(
                    list,
                    field("methods"),
                    "must not be empty (leave `methods` out to allow every method)",
                ));
            }
            let mut methods: Vec<String> = Vec::with_capacity(list.get_ref().len());
            for (j, method) in list.get_ref().iter().enumerate() {
                if !is_token(method.get_ref()) {
                    return Err(cx.at(
                        method,
                        format!("{key}.methods[{j}]"),
                        "is not a method name",
                    ));
                }
                let method = method.get_ref().to_ascii_uppercase();
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
            Some(methods)
        }
    };

    let action = match (&file.upstream, &file.respond) {
        (Some(name), None) => {
            let Some(&upstream) = upstreams.get(name.get_ref().as_str()) else {
                let mut known: Vec<&str> = upstreams.keys().copied().collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                return Err(cx.at(
                    name,
                    field("upstream"),
                    format!("no upstream named `{}` (defined: {known})", name.get_ref()),
                ));
            };
            let host_rewrite = match &file.host_rewrite {
                None => None,
                Some(host) if is_authority(host.get_ref()) => Some(host.get_ref().clone()),
                Some(host) => {
                    return Err(cx.at(
                        host,
                        field("host_rewrite"),
                        "must be a host name, optionally with :port",
                    ))
                }
            };
            Action::Proxy {
                upstream,
                strip_prefix: file.strip_prefix.as_ref().is_some_and(|s| *s.get_ref()),
                host_rewrite,
            }
        }
        (None, Some(respond)) => {
            if let Some(strip) = &file.strip_prefix {
                return Err(cx.at(
                    strip,
                    field("strip_prefix"),
                    "only applies to routes with an `upstream`",
                ));
            }
            if let Some(host) = &file.host_rewrite {
                return Err(cx.at(
                    host,
                    field("host_rewrite"),
                    "only applies to routes with an `upstream`",
                ));
            }
            self::respond(cx, respond, &field("respond"))?
        }
        (Some(name), Some(_)) => {
            return Err(cx.at(
                name,
                field("upstream"),
                "cannot be combined with `respond`: a route either proxies or responds",
            ));
        }
        (None, None) => {
            return Err(cx.at(
                spanned,
                key,
                "needs `upstream = \"name\"` or `respond = { status = ... }`",
            ));
        }
    };

    Ok(Route {
        host,
        path_prefix: prefix.clone(),
        methods,
        action,
        rate_limit: None,
        cache: match &file.cache {
            None => None,
            Some(value) => route_cache(cx, value, &field("cache"))?,
        },
    })
}

fn respond(cx: &Cx, file: &RespondFile, key: &str) -> Result<Action, ConfigError> {
    let status = u16::try_from(*file.status.get_ref())
        .ok()
        .filter(|status| (100..=599).contains(status))
        .ok_or_else(|| {
            cx.at(
                &file.status,
                format!("{key}.status"),
                "must be between 100 and 599",
            )
        })?;
    // RFC 9110 §6.4.1: these responses end at the head.
    if !file.body.is_empty() && (status < 200 || status == 204 || status == 304) {
        return Err(cx.at(
            &file.status,
            format!("{key}.body"),
            format!("a {status} response cannot have a body"),
        ));
    }

    let mut headers: Vec<(&Spanned<String>, &Spanned<String>)> = file.headers.iter().collect();
    headers.sort_by_key(|(name, _)| name.span().start);
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let mut key = format!("{key}.headers");
        push_key(&mut key, name.get_ref());
        if !is_token(name.get_ref()) {
            return Err(cx.at(name, key, "is not a header name"));
        }
        if name.get_ref().eq_ignore_ascii_case("content-length")
            || name.get_ref().eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(cx.at(name, key, "is set by the gateway from `body`"));
        }
        // RFC 9110 §5.5; CR and LF here would let the config split the response.
        let text = value.get_ref();
        let clean = text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            && text.trim_matches([' ', '\t']) == text;
        if !clean {
            return Err(cx.at(
                value,
                key,
                "must not hold control characters or leading or trailing whitespace",
            ));
        }
        out.push((name.get_ref().clone(), text.clone()));
    }

    Ok(Action::Respond {
        status,
        body: file.body.clone(),
        headers: out,
    })
}

fn methods_overlap(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

/// `"example.com"` → `Exact`, `"*.example.com"` → `Suffix(".example.com")`, lowercased, with a
/// trailing dot dropped (the route table drops it from requests too).
fn host_match(pattern: &str) -> Result<HostMatch, String> {
    let lower = pattern.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(suffix) = name.strip_prefix("*.") {
        if !is_dns_name(suffix) {
            return Err(format!(
                "`{pattern}`: the part after \"*.\" must be a host name"
            ));
        }
        return Ok(HostMatch::Suffix(format!(".{suffix}")));
    }
    if name.contains('*') {
        return Err(format!("`{pattern}`: a wildcard is only allowed as a whole first label, as in \"*.example.com\""));
    }
    if name.starts_with('[') {
        let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
        if literal.is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()) {
            return Ok(HostMatch::Exact(name.to_string()));
        }
        return Err(format!("`{pattern}` is not a bracketed IPv6 address"));
    }
    if let Some((_, port)) = name.rsplit_once(':') {
        return Err(format!(
            "`{pattern}`: host patterns match the name only; drop \":{port}\""
        ));
    }
    if !is_dns_name(name) {
        return Err(format!("`{pattern}` is not a host name"));
    }
    Ok(HostMatch::Exact(name.to_string()))
}

/// Lowercase letters, digits, '-' and '_' in non-empty labels of at most 63 bytes; IPv4
/// addresses pass too.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// What a Host header may carry: a name or IP literal with an optional port.
fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// RFC 9110 §5.6.2 `token`: method and header names.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::chars::is_tchar)
}

fn socket_addr(cx: &Cx, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    value.get_ref().parse().map_err(|_| {
        cx.at(
            value,
            key,
            format!(
                "`{}` is not an IP:port address such as \"127.0.0.1:8080\" or \"[::1]:8080\"",
                value.get_ref()
            ),
        )
    })
}

fn positive(cx: &Cx, n: &Spanned<i64>, key: &str) -> Result<usize, ConfigError> {
    usize::try_from(*n.get_ref())
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| cx.at(n, key, "must be at least 1"))
}

/// Whether a zero duration makes sense for a key: a zero drain is "close at once", but a zero
/// timeout would fail every request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Rejected,
}

fn duration(
    cx: &Cx,
    value: Option<&Spanned<Value>>,
    key: &str,
    default: Duration,
    zero: Zero,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = match value.get_ref() {
        Value::String(s) => parse_duration(s),
        Value::Integer(n) => Err(format!("needs a unit: \"{n}s\", \"{n}ms\", ...")),
        other => Err(format!(
            "expected a duration such as \"30s\", found a {}",
            other.type_str()
        )),
    };
    match parsed {
        Ok(d) if d.is_zero() && zero == Zero::Rejected => {
            Err(cx.at(value, key, "must be longer than zero"))
        }
        Ok(d) => Ok(d),
        Err(message) => Err(cx.at(value, key, message)),
    }
}

fn size(
    cx: &Cx,
    value: Option<&Spanned<Value>>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let parsed = match value.get_ref() {
        Value::String(s) => parse_size(s),
        Value::Integer(n) => u64::try_from(*n).map_err(|_| "must not be negative".to_string()),
        other => Err(format!(
            "expected a size such as \"16KiB\" or a number of bytes, found a {}",
            other.type_str()
        )),
    };
    parsed.map_err(|message| cx.at(value, key, message))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`: a whole number and one unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(text, "a duration such as \"30s\"")?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "" => return Err(format!("`{text}` needs a unit: ms, s, m or h")),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// `"16KiB"`, `"256MiB"`, `"1GiB"`, `"512B"`: a whole number and one binary unit.
fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = split_number(text, "a size such as \"16KiB\"")?;
    let scale = match unit {
        "B" => 1,
        "KiB" => KIB,
        "MiB" => MIB,
        "GiB" => GIB,
        "" => {
            return Err(format!(
                "`{text}` needs a unit: B, KiB, MiB or GiB (or write bytes as a plain number)"
            ))
        }
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (sizes use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Leading decimal digits and the rest: `"30s"` → `(30, "s")`.
fn split_number<'a>(text: &'a str, expected: &str) -> Result<(u64, &'a str), String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("`{text}` is not {expected}"));
    }
    let (number, unit) = text.split_at(digits);
    let n = number
        .parse()
        .map_err(|_| format!("`{text}`: the number is too large"))?;
    Ok((n, unit))
}
