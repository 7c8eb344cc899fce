//! A route's CORS policy (the Fetch standard's CORS protocol, as a server sees it): which
//! origins may read its responses, and with which methods and headers.
//!
//! The gateway answers preflights itself ([`CorsPolicy::preflight`]), so the upstream never sees
//! them, and adds the response headers to actual responses ([`CorsPolicy::response_headers`]).
//! CORS is not access control: a request from a refused origin still reaches the upstream (a
//! browser only withholds the response from the page), so routes that need protection also need
//! `auth`. Origins, methods and header lists arrive from the network: they are matched as bytes,
//! never echoed unless they matched a configured pattern or are a clean token list, and nothing
//! is allocated per request beyond the caller's output buffer.

use std::time::Duration;

use serde::Serialize;

use super::write_header;
use crate::http::chars::is_tchar;

/// Why a CORS setting was refused; `field` and `index` say which value (for the config's key
/// path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CorsError {
    /// `"origins"`, `"methods"`, `"headers"`, `"expose_headers"` or `"credentials"`.
    pub field: &'static str,
    pub index: Option<usize>,
    pub message: String,
}

/// The settings as written in the config (what `/config` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorsSettings {
    /// `"*"`, exact origins (`"https://app.example.com"`) or one-label wildcards
    /// (`"https://*.example.com"`, any depth of subdomain, never the bare domain).
    pub origins: Vec<String>,
    /// Methods a preflight may ask for; empty means the CORS-safelisted GET, HEAD, POST.
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for; `["*"]` allows any.
    pub headers: Vec<String>,
    /// Response headers the page may read beyond the safelisted ones.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Duration>,
    /// Allow cookies and HTTP authentication (never with `origins = ["*"]`).
    pub credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    /// `"*"`: any origin, answered with `Access-Control-Allow-Origin: *`.
    Any,
    List(Vec<OriginPattern>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    /// `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `https://*.example.com:8443` is `{ scheme: "https://", suffix: ".example.com:8443" }`.
    Subdomains { scheme: String, suffix: String },
}

impl OriginPattern {
    fn parse(text: &str) -> Result<OriginPattern, String> {
        let lower = text.to_ascii_lowercase();
        if lower == "null" {
            return Err(
                "the `null` origin is what sandboxed documents and local files send: \
                        allowing it allows them all"
                    .into(),
            );
        }
        let Some((scheme, authority)) = lower.split_once("://") else {
            return Err(format!(
                "`{text}` is not an origin such as \"https://app.example.com\""
            ));
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(format!("`{text}`: `{scheme}` is not a URL scheme"));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "`{text}`: an origin is scheme://host[:port], without a path or a trailing '/'"
            ));
        }
        let (host, port) = split_port(authority)
            .ok_or_else(|| format!("`{text}`: the port must be a number from 1 to 65535"))?;
        if let Some(suffix) = host.strip_prefix("*.") {
            // At least two labels after the wildcard: "*.com" would allow a whole TLD.
            if !is_dns_name(suffix) || !suffix.contains('.') {
                return Err(format!(
                    "`{text}`: after \"*.\" comes a domain of at least two labels, as in \"https://*.example.com\""
                ));
            }
            return Ok(OriginPattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{suffix}{port}"),
            });
        }
        if host.contains('*') {
            return Err(format!(
                "`{text}`: a wildcard is only allowed as a whole first label, as in \"https://*.example.com\""
            ));
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !literal && !is_dns_name(host) {
            return Err(format!("`{text}`: `{host}` is not a host name"));
        }
        Ok(OriginPattern::Exact(lower))
    }

    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact.as_bytes()),
            OriginPattern::Subdomains { scheme, suffix } => {
                let (scheme, suffix) = (scheme.as_bytes(), suffix.as_bytes());
                if origin.len() <= scheme.len() + suffix.len() {
                    return false;
                }
                let (head, rest) = origin.split_at(scheme.len());
                let (labels, tail) = rest.split_at(rest.len() - suffix.len());
                // `labels` is what the wildcard stands for: whole DNS labels, so that neither
                // "https://evil-example.com" nor "https://example.com.evil.com" can match
                // ".example.com", and no ':' or '@' can smuggle in another authority.
                head.eq_ignore_ascii_case(scheme)
                    && tail.eq_ignore_ascii_case(suffix)
                    && !labels.starts_with(b".")
                    && !labels.ends_with(b".")
                    && !labels.windows(2).any(|w| w == b"..")
                    && labels
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

/// `host[:port]` → (host, ":port" or ""); None for a bad port.
fn split_port(authority: &str) -> Option<(&str, &str)> {
    // A ':' after a bracketed IPv6 literal, or any ':' in a name, starts the port.
    let colon = match authority.rfind(']') {
        Some(close) => authority
            .get(close..)
            .and_then(|t| t.find(':'))
            .map(|i| close + i),
        None => authority.find(':'),
    };
    let Some(colon) = colon else {
        return Some((authority, ""));
    };
    let (host, port) = authority.split_at(colon);
    let digits = port.get(1..)?;
    let valid = !digits.is_empty()
        && digits.len() <= 5
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u16>().is_ok_and(|p| p >= 1);
    valid.then_some((host, port))
}

/// Lowercase letters, digits, '-' in non-empty labels of at most 63 bytes (IPv4 passes).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Request headers a preflight may name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowHeaders {
    /// `["*"]`: echo what the preflight asks for (a literal `*` would not cover credentialed
    /// requests, so the list is echoed instead).
    Any,
    /// Lowercase names.
    List(Vec<String>),
}

/// What a request is, as far as CORS goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsRequest<'a> {
    /// No `Origin` header: not a cross-origin browser request.
    NotCors,
    /// An actual request from a page at `origin`: it goes on, and its response gets
    /// [`CorsPolicy::response_headers`].
    Actual { origin: &'a [u8] },
    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method`: the gateway answers it.
    Preflight {
        origin: &'a [u8],
        method: &'a [u8],
        /// The `Access-Control-Request-Headers` value, if sent.
        headers: Option<&'a [u8]>,
    },
}

/// Sorts a request by the headers that CORS looks at: `Origin`, `Access-Control-Request-Method`
/// and `Access-Control-Request-Headers`.
pub fn classify<'a>(
    is_options: bool,
    origin: Option<&'a [u8]>,
    request_method: Option<&'a [u8]>,
    request_headers: Option<&'a [u8]>,
) -> CorsRequest<'a> {
    match (origin, request_method) {
        (None, _) => CorsRequest::NotCors,
        (Some(origin), Some(method)) if is_options => CorsRequest::Preflight {
            origin,
            method,
            headers: request_headers,
        },
        (Some(origin), _) => CorsRequest::Actual { origin },
    }
}

/// The gateway's answer to a preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preflight {
    /// Answer 204 with the headers written to the caller's buffer.
    Allowed,
    /// Answer 403 without CORS headers; the page's request will not be sent. The reason is for
    /// logs.
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method,
    Header,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Origin => "origin not allowed",
            Refusal::Method => "method not allowed",
            Refusal::Header => "request header not allowed",
        }
    }
}

/// A validated, ready-to-answer CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    settings: CorsSettings,
    origins: Origins,
    /// Uppercase, as a preflight's method is compared case-sensitively (Fetch normalises the
    /// standard ones to uppercase).
    methods: Vec<String>,
    headers: AllowHeaders,
    /// The values of the fixed headers, joined once here rather than per request.
    allow_methods: String,
    allow_headers: String,
    expose: String,
    max_age: String,
}

impl Serialize for CorsPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.settings.serialize(serializer)
    }
}

impl CorsPolicy {
    pub fn new(settings: CorsSettings) -> Result<CorsPolicy, CorsError> {
        let err = |field, index, message: String| CorsError {
            field,
            index,
            message,
        };
        if settings.origins.is_empty() {
            return Err(err(
                "origins",
                None,
                "needs at least one origin (or \"*\")".into(),
            ));
        }
        let origins = if let Some(i) = settings.origins.iter().position(|o| o == "*") {
            if settings.origins.len() > 1 {
                return Err(err(
                    "origins",
                    Some(i),
                    "\"*\" allows every origin: list no others beside it".into(),
                ));
            }
            if settings.credentials {
                // Fetch refuses `*` on credentialed responses; echoing any origin instead
                // would hand every site the user's cookies.
                return Err(err(
                    "credentials",
                    None,
                    "cannot be true with origins = [\"*\"]: list the origins that may send credentials".into(),
                ));
            }
            Origins::Any
        } else {
            let mut list = Vec::with_capacity(settings.origins.len());
            for (i, text) in settings.origins.iter().enumerate() {
                list.push(OriginPattern::parse(text).map_err(|m| err("origins", Some(i), m))?);
            }
            Origins::List(list)
        };

        let mut methods = Vec::new();
        for (i, method) in settings.methods.iter().enumerate() {
            if !is_token(method) {
                return Err(err(
                    "methods",
                    Some(i),
                    format!("`{method}` is not a method name"),
                ));
            }
            let upper = method.to_ascii_uppercase();
            if !methods.contains(&upper) {
                methods.push(upper);
            }
        }
        if methods.is_empty() {
            methods = ["GET", "HEAD", "POST"].map(String::from).to_vec();
        }

        let headers = if settings.headers.iter().any(|h| h == "*") {
            if settings.headers.len() > 1 {
                let i = settings.headers.iter().position(|h| h == "*");
                return Err(err(
                    "headers",
                    i,
                    "\"*\" allows every header: list no others beside it".into(),
                ));
            }
            AllowHeaders::Any
        } else {
            AllowHeaders::List(token_list(&settings.headers, "headers")?)
        };
        let expose = token_list(&settings.expose_headers, "expose_headers")?;

        let allow_headers = match &headers {
            AllowHeaders::Any => String::new(),
            AllowHeaders::List(list) => list.join(", "),
        };
        Ok(CorsPolicy {
            allow_methods: methods.join(", "),
            allow_headers,
            expose: expose.join(", "),
            max_age: settings
                .max_age
                .map(|d| d.as_secs().to_string())
                .unwrap_or_default(),
            origins,
            methods,
            headers,
            settings,
        })
    }

    pub fn settings(&self) -> &CorsSettings {
        &self.settings
    }

    /// Whether `origin` (an `Origin` header's value) may read this route's responses.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|p| p.matches(origin)),
        }
    }

    /// Answers a preflight: on [`Preflight::Allowed`] the caller responds 204 with the lines
    /// written to `out` (`Name: value\r\n` each); on a refusal nothing is written and the
    /// caller responds 403.
    pub fn preflight(
        &self,
        origin: &[u8],
        method: &[u8],
        request_headers: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Preflight {
        if !self.allows_origin(origin) {
            return Preflight::Refused(Refusal::Origin);
        }
        if !self.methods.iter().any(|m| m.as_bytes() == method) {
            return Preflight::Refused(Refusal::Method);
        }
        let requested = request_headers.unwrap_or_default();
        let mut names = list_items(requested);
        let headers_ok = match &self.headers {
            // Echoed, so it must be nothing but tokens and separators.
            AllowHeaders::Any => names.all(|name| name.iter().all(|&b| is_tchar(b))),
            AllowHeaders::List(list) => names.all(|name| {
                list.iter()
                    .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(name))
            }),
        };
        if !headers_ok {
            return Preflight::Refused(Refusal::Header);
        }

        self.write_origin(origin, out);
        write_header(
            out,
            b"Access-Control-Allow-Methods",
            self.allow_methods.as_bytes(),
        );
        match &self.headers {
            AllowHeaders::Any if list_items(requested).next().is_some() => {
                write_header(out, b"Access-Control-Allow-Headers", requested);
            }
            AllowHeaders::List(_) if !self.allow_headers.is_empty() => {
                write_header(
                    out,
                    b"Access-Control-Allow-Headers",
                    self.allow_headers.as_bytes(),
                );
            }
            _ => {}
        }
        if !self.max_age.is_empty() {
            write_header(out, b"Access-Control-Max-Age", self.max_age.as_bytes());
        }
        // The answer depends on all three request headers.
        write_header(
            out,
            b"Vary",
            b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        );
        Preflight::Allowed
    }

    /// The headers to add to an actual response on this route; `origin` is the request's
    /// `Origin` value. With a list of origins, `Vary: Origin` is written on every response,
    /// allowed or not and with or without an `Origin`, since the answer depends on it and a
    /// shared cache must not hand one origin's copy to another.
    pub fn response_headers(&self, origin: Option<&[u8]>, out: &mut Vec<u8>) {
        if matches!(self.origins, Origins::List(_)) {
            write_header(out, b"Vary", b"Origin");
        }
        let Some(origin) = origin.filter(|o| self.allows_origin(o)) else {
            return;
        };
        self.write_origin(origin, out);
        if !self.expose.is_empty() {
            write_header(
                out,
                b"Access-Control-Expose-Headers",
                self.expose.as_bytes(),
            );
        }
    }

    /// `Access-Control-Allow-Origin` (and `-Credentials`) for an allowed origin.
    fn write_origin(&self, origin: &[u8], out: &mut Vec<u8>) {
        match self.origins {
            Origins::Any => write_header(out, b"Access-Control-Allow-Origin", b"*"),
            // Safe to echo: it matched a pattern made of host characters only.
            Origins::List(_) => write_header(out, b"Access-Control-Allow-Origin", origin),
        }
        if self.settings.credentials {
            write_header(out, b"Access-Control-Allow-Credentials", b"true");
        }
    }
}

/// Validates header names (lowercased, deduplicated) for `field`.
fn token_list(names: &[String], field: &'static str) -> Result<Vec<String>, CorsError> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if !is_token(name) {
            return Err(CorsError {
                field,
                index: Some(i),
                message: format!("`{name}` is not a header name"),
            });
        }
        let lower = name.to_ascii_lowercase();
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

/// The non-empty items of a comma-separated list, without surrounding whitespace.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            origins: origins.iter().map(|s| (*s).to_string()).collect(),
            methods: Vec::new(),
            headers: Vec::new(),
            expose_headers: Vec::new(),
            max_age: None,
            credentials: false,
        }
    }

    fn policy(s: CorsSettings) -> CorsPolicy {
        CorsPolicy::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap_or("<not utf-8>")
    }

    #[test]
    fn classify_requests() {
        let o = Some(&b"https://a.example.com"[..]);
        assert_eq!(classify(false, None, None, None), CorsRequest::NotCors);
        assert_eq!(
            classify(true, None, Some(b"GET"), None),
            CorsRequest::NotCors
        );
        assert_eq!(
            classify(false, o, None, None),
            CorsRequest::Actual {
                origin: b"https://a.example.com"
            }
        );
        // OPTIONS without Access-Control-Request-Method is an actual OPTIONS request.
        assert!(matches!(
            classify(true, o, None, None),
            CorsRequest::Actual { .. }
        ));
        // Access-Control-Request-Method on another method is not a preflight.
        assert!(matches!(
            classify(false, o, Some(b"PUT"), None),
            CorsRequest::Actual { .. }
        ));
        assert_eq!(
            classify(true, o, Some(b"PUT"), Some(b"x-a")),
            CorsRequest::Preflight {
                origin: b"https://a.example.com",
                method: b"PUT",
                headers: Some(b"x-a"),
            }
        );
    }

    #[test]
    fn exact_origins() {
        let p = policy(settings(&[
            "https://app.example.com",
            "http://localhost:3000",
        ]));
        assert!(p.allows_origin(b"https://app.example.com"));
        assert!(p.allows_origin(b"HTTPS://APP.EXAMPLE.COM"));
        assert!(p.allows_origin(b"http://localhost:3000"));
        for refused in [
            &b"https://app.example.com:443"[..],
            b"http://app.example.com",
            b"https://app.example.com/",
            b"https://app.example.co",
            b"https://x.app.example.com",
            b"http://localhost:30000",
            b"http://localhost",
            b"null",
            b"",
        ] {
            assert!(!p.allows_origin(refused), "{}", text(refused));
        }
    }

    #[test]
    fn wildcard_subdomains() {
        let p = policy(settings(&["https://*.example.com"]));
        for allowed in [
            &b"https://a.example.com"[..],
            b"https://a.b.example.com",
            b"https://A-1.Example.COM",
        ] {
            assert!(p.allows_origin(allowed), "{}", text(allowed));
        }
        for refused in [
            &b"https://example.com"[..],
            b"https://.example.com",
            b"https://evil-example.com",
            b"https://evilexample.com",
            b"https://example.com.evil.com",
            b"https://a.example.com.evil.com",
            b"https://a.example.com:8443",
            b"http://a.example.com",
            b"https://a..example.com",
            b"https://evil.com@a.example.com",
            b"https://evil.com/.example.com",
            b"https://a_b.example.com",
            b"https://a.example.com\r\nX: y",
            b"https://",
        ] {
            assert!(!p.allows_origin(refused), "{}", text(refused));
        }
        let with_port = policy(settings(&["https://*.example.com:8443"]));
        assert!(with_port.allows_origin(b"https://a.example.com:8443"));
        assert!(!with_port.allows_origin(b"https://a.example.com"));
        assert!(!with_port.allows_origin(b"https://a.example.com:84430"));
    }

    #[test]
    fn refused_settings() {
        let field_of = |origins: &[&str], credentials: bool| {
            let mut s = settings(origins);
            s.credentials = credentials;
            CorsPolicy::new(s)
                .map(|_| ())
                .map_err(|e| (e.field, e.index))
        };
        assert_eq!(field_of(&[], false), Err(("origins", None)));
        assert_eq!(field_of(&["*"], true), Err(("credentials", None)));
        assert_eq!(
            field_of(&["*", "https://a.com"], false),
            Err(("origins", Some(0)))
        );
        for bad in [
            "null",
            "example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://example.com:0",
            "https://example.com:65536",
            "https://exa mple.com",
            "1http://example.com",
        ] {
            assert_eq!(
                field_of(&["https://ok.example.com", bad], false),
                Err(("origins", Some(1))),
                "{bad}"
            );
        }
        assert!(field_of(&["http://[::1]:8080", "https://192.0.2.1"], false).is_ok());
        let mut s = settings(&["https://a.com"]);
        s.headers = vec!["x-ok".into(), "bad header".into()];
        assert_eq!(
            CorsPolicy::new(s).map_err(|e| (e.field, e.index)),
            Err(("headers", Some(1)))
        );
    }

    #[test]
    fn preflight_answer() {
        let mut s = settings(&["https://*.example.com"]);
        s.methods = vec!["get".into(), "PUT".into()];
        s.headers = vec!["X-Request-Id".into(), "Content-Type".into()];
        s.max_age = Some(Duration::from_secs(600));
        s.credentials = true;
        let p = policy(s);
        let mut out = Vec::new();
        let answer = p.preflight(
            b"https://app.example.com",
            b"PUT",
            Some(b"content-type, X-Request-ID"),
            &mut out,
        );
        assert_eq!(answer, Preflight::Allowed);
        assert_eq!(
            text(&out),
            "Access-Control-Allow-Origin: https://app.example.com\r\n\
             Access-Control-Allow-Credentials: true\r\n\
             Access-Control-Allow-Methods: GET, PUT\r\n\
             Access-Control-Allow-Headers: x-request-id, content-type\r\n\
             Access-Control-Max-Age: 600\r\n\
             Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n"
        );

        let mut out = Vec::new();
        let refuse = |origin: &[u8], method: &[u8], headers: Option<&[u8]>, out: &mut Vec<u8>| {
            p.preflight(origin, method, headers, out)
        };
        assert_eq!(
            refuse(b"https://evil-example.com", b"PUT", None, &mut out),
            Preflight::Refused(Refusal::Origin)
        );
        assert_eq!(
            refuse(b"https://a.example.com", b"DELETE", None, &mut out),
            Preflight::Refused(Refusal::Method)
        );
        assert_eq!(
            refuse(b"https://a.example.com", b"put", None, &mut out),
            Preflight::Refused(Refusal::Method),
            "methods are case-sensitive"
        );
        assert_eq!(
            refuse(
                b"https://a.example.com",
                b"GET",
                Some(b"x-request-id, x-other"),
                &mut out
            ),
            Preflight::Refused(Refusal::Header)
        );
        assert!(out.is_empty(), "a refusal writes nothing");
        assert_eq!(
            refuse(b"https://a.example.com", b"GET", Some(b" , "), &mut out),
            Preflight::Allowed
        );
    }

    #[test]
    fn preflight_any_header_echoes_clean_lists_only() {
        let mut s = settings(&["*"]);
        s.headers = vec!["*".into()];
        let p = policy(s);
        let mut out = Vec::new();
        assert_eq!(
            p.preflight(b"https://x.test", b"POST", Some(b"x-a,x-b"), &mut out),
            Preflight::Allowed
        );
        assert_eq!(
            text(&out),
            "Access-Control-Allow-Origin: *\r\n\
             Access-Control-Allow-Methods: GET, HEAD, POST\r\n\
             Access-Control-Allow-Headers: x-a,x-b\r\n\
             Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n"
        );
        out.clear();
        assert_eq!(
            p.preflight(
                b"https://x.test",
                b"POST",
                Some(b"x-a\r\nSet-Cookie: a"),
                &mut out
            ),
            Preflight::Refused(Refusal::Header)
        );
    }

    #[test]
    fn actual_response_headers() {
        let mut s = settings(&["https://app.example.com"]);
        s.expose_headers = vec!["X-Total".into(), "ETag".into()];
        s.credentials = true;
        let p = policy(s);
        let mut out = Vec::new();
        p.response_headers(Some(b"https://app.example.com"), &mut out);
        assert_eq!(
            text(&out),
            "Vary: Origin\r\n\
             Access-Control-Allow-Origin: https://app.example.com\r\n\
             Access-Control-Allow-Credentials: true\r\n\
             Access-Control-Expose-Headers: x-total, etag\r\n"
        );
        out.clear();
        p.response_headers(Some(b"https://evil.com"), &mut out);
        assert_eq!(text(&out), "Vary: Origin\r\n");
        out.clear();
        p.response_headers(None, &mut out);
        assert_eq!(text(&out), "Vary: Origin\r\n");

        let any = policy(settings(&["*"]));
        out.clear();
        any.response_headers(Some(b"https://anyone.test"), &mut out);
        assert_eq!(text(&out), "Access-Control-Allow-Origin: *\r\n");
        out.clear();
        any.response_headers(None, &mut out);
        assert!(out.is_empty());
    }
}
