//! A route's access rules applied to one request, in their order (address, CORS, credentials,
//! header edits): the decision and the header lines it adds; answering is the caller's.

use super::*;

/// What a route's access rules make of a request.
pub(super) enum Access {
    /// On to the upstream (or the route's answer), with the identity and `set` lines in
    /// `s.upstream_extra` and the response's CORS lines in `s.extra`.
    Pass,
    /// A CORS preflight the gateway answers itself: 204 with the lines in `s.extra`.
    Preflight,
    /// Refused: the error's status, with any challenge (WWW-Authenticate) in `s.extra`.
    Refuse(Error),
}

/// Applies a route's access rules in their order (see `access`): address, CORS, credentials,
/// request header edits. Every refusal is logged here with its reason (the status and counter
/// come from `reject`).
pub(super) fn check_access(
    w: &Worker,
    head: &RequestHead,
    buf: &[u8],
    ip: IpAddr,
    policy: &RoutePolicy,
    s: &mut Scratch,
) -> Access {
    if !policy.ip.permits(ip) {
        return Access::Refuse(Error::IpDenied);
    }
    if let Some(cors) = &policy.cors {
        let request = cors::classify(
            head.method == Method::Options,
            head.fields.get(buf, b"origin"),
            head.fields.get(buf, b"access-control-request-method"),
            head.fields.get(buf, b"access-control-request-headers"),
        );
        match request {
            CorsRequest::Preflight {
                origin,
                method,
                headers,
            } => {
                return match cors.preflight(origin, method, headers, &mut s.extra) {
                    Preflight::Allowed => Access::Preflight,
                    Preflight::Refused(why) => {
                        s.extra.clear();
                        tracing::info!(
                            worker = w.id,
                            reason = why.as_str(),
                            "CORS preflight refused"
                        );
                        Access::Refuse(Error::CorsRefused)
                    }
                };
            }
            CorsRequest::Actual { origin } => cors.response_headers(Some(origin), &mut s.extra),
            CorsRequest::NotCors => {}
        }
    }
    if let Some(auth) = &policy.auth {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verdict = auth.check(
            |name| head.fields.get(buf, name),
            now,
            &mut w.jwt.borrow_mut(),
            &mut s.upstream_extra,
        );
        if let Verdict::Deny(denial) = verdict {
            tracing::info!(
                worker = w.id,
                status = denial.status,
                reason = denial.reason.as_str(),
                "request refused by auth"
            );
            denial.write_headers(&mut s.extra);
            return Access::Refuse(if denial.status == 403 {
                Error::Forbidden
            } else {
                Error::Unauthorized
            });
        }
    }
    policy.request_headers.write_set(&mut s.upstream_extra);
    policy.response_headers.write_set(&mut s.extra);
    Access::Pass
}
