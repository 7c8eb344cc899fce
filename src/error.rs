//! Why an exchange failed, which side caused it, and what the client is told: the one place
//! that maps failures to status codes and metric labels (pingora's "which side failed").

use crate::http::ParseError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// A failed exchange. `Copy` and small: it travels up the pipeline and into counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    Request(ParseError),
    #[error("request body larger than server.max_body")]
    BodyTooLarge,
    #[error("client sent no complete head within server.header_timeout")]
    HeaderTimeout,
    #[error("client closed the connection mid-request")]
    ClientClosed,
    #[error("no route for this host, path and method")]
    NoRoute,
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("PURGE from an address not in cache.purge_allow")]
    PurgeForbidden,
    #[error("client address refused by ip_allow/ip_deny")]
    IpDenied,
    #[error("CORS preflight refused")]
    CorsRefused,
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("credentials lack a required scope")]
    Forbidden,
    #[error("upstream refused the connection")]
    UpstreamRefused,
    #[error("upstream connect timed out")]
    UpstreamConnectTimeout,
    #[error("upstream did not answer within read_timeout")]
    UpstreamTimeout,
    #[error("upstream sent a malformed response: {0}")]
    UpstreamProtocol(ParseError),
    #[error("upstream closed the connection before the response ended")]
    UpstreamClosed,
    #[error("upstream i/o error")]
    UpstreamIo,
    /// The TLS handshake with the upstream failed (its certificate did not verify, no common
    /// protocol, ...); the reason is logged.
    #[error("upstream TLS handshake failed")]
    UpstreamTls,
    #[error("upstream circuit breaker open")]
    BreakerOpen,
}

impl Error {
    pub fn side(self) -> Side {
        match self {
            Error::Request(_)
            | Error::BodyTooLarge
            | Error::HeaderTimeout
            | Error::ClientClosed => Side::Client,
            Error::NoRoute => Side::Internal,
            _ => Side::Upstream,
        }
    }

    /// The status the client gets (if the response has not started yet).
    pub fn status(self) -> u16 {
        match self {
            Error::Request(e) => e.status(),
            Error::BodyTooLarge => 413,
            Error::HeaderTimeout => 408,
            Error::ClientClosed => 400,
            Error::NoRoute => 404,
            Error::RateLimited => 429,
            Error::PurgeForbidden | Error::IpDenied | Error::CorsRefused | Error::Forbidden => 403,
            Error::Unauthorized => 401,
            Error::UpstreamConnectTimeout | Error::UpstreamTimeout => 504,
            Error::BreakerOpen => 503,
            Error::UpstreamRefused
            | Error::UpstreamProtocol(_)
            | Error::UpstreamClosed
            | Error::UpstreamIo
            | Error::UpstreamTls => 502,
        }
    }

    /// Low-cardinality label for counters and log lines.
    pub fn label(self) -> &'static str {
        match self {
            Error::Request(e) => e.label(),
            Error::BodyTooLarge => "body_too_large",
            Error::HeaderTimeout => "header_timeout",
            Error::ClientClosed => "client_closed",
            Error::NoRoute => "no_route",
            Error::RateLimited => "rate_limited",
            Error::PurgeForbidden => "purge_forbidden",
            Error::IpDenied => "ip_denied",
            Error::CorsRefused => "cors_refused",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden => "forbidden",
            Error::UpstreamRefused => "upstream_refused",
            Error::UpstreamConnectTimeout => "upstream_connect_timeout",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::UpstreamProtocol(_) => "upstream_protocol",
            Error::UpstreamClosed => "upstream_closed",
            Error::UpstreamIo => "upstream_io",
            Error::UpstreamTls => "upstream_tls",
            Error::BreakerOpen => "breaker_open",
        }
    }
}
