//! httparse as the oracle: the facts a proxy needs, extracted from httparse's output the way a
//! user of httparse would, and the differential check of our parser against it. Shared by the
//! property test, the fuzz target and the bench (`#[path]`-included, so it stays one copy).

#![allow(dead_code)]

use ringgate::http::{Framing, Limits, ParseError, RequestHead, Status, Version};

/// The framing and routing facts of a request head, as both parsers can produce them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub host: Option<Vec<u8>>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
}

/// What a user of httparse writes after `parse` to learn what ringgate's parser reports in the
/// same pass: Host, Content-Length, chunked, Connection tokens, Upgrade, Expect.
pub fn httparse_facts(req: &httparse::Request<'_, '_>) -> Facts {
    let mut f = Facts {
        host: None,
        content_length: None,
        chunked: false,
        close: false,
        keep_alive: false,
        upgrade: false,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            f.host = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A list of identical values counts as one (RFC 9110 §8.6).
            let mut values = h.value.split(|&b| b == b',').map(|v| {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            let first = values.next().flatten();
            f.content_length = if values.all(|v| v == first) {
                first
            } else {
                None
            };
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding, empty list elements skipped (RFC 9110 §5.6.1).
            f.chunked = h
                .value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|c| !c.is_empty())
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                f.close |= token.eq_ignore_ascii_case(b"close");
                f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                f.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    f
}

/// The same facts from ringgate's head.
pub fn our_facts(head: &RequestHead, buf: &[u8]) -> Facts {
    let f = &head.fields;
    Facts {
        host: f.host.map(|h| h.of(buf).to_vec()),
        content_length: f.content_length,
        chunked: head.framing() == Framing::Chunked,
        close: f.connection.close,
        keep_alive: f.connection.keep_alive,
        upgrade: f.connection.upgrade,
        expect_continue: f.expect_continue,
    }
}

/// Parses `input` with both parsers and panics where they disagree in a way our strict rules
/// do not explain: where both accept, method, target, version, head length and the header
/// list must be identical; where only ours rejects, the input must break the rule our error
/// names; ours must never accept what httparse rejects. Also asserts that nothing panics.
pub fn check(input: &[u8]) {
    let limits = Limits::DEFAULT;
    let mut head = RequestHead::new(&limits);
    let ours = head.parse(input, &limits);
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let theirs = req.parse(input);
    let show = || String::from_utf8_lossy(input).into_owned();
    match (ours, theirs) {
        (Ok(Status::Complete(n)), Ok(httparse::Status::Complete(m))) => {
            assert_eq!(n, m, "head length: {:?}", show());
            assert_eq!(
                Some(head.method_span.of(input)),
                req.method.map(str::as_bytes)
            );
            assert_eq!(Some(head.target.of(input)), req.path.map(str::as_bytes));
            let version = match head.version {
                Version::Http10 => 0,
                Version::Http11 => 1,
            };
            assert_eq!(Some(version), req.version);
            let ours: Vec<(&[u8], &[u8])> = head
                .fields
                .headers
                .iter()
                .map(|h| (h.name.of(input), h.value.of(input)))
                .collect();
            let theirs: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect();
            assert_eq!(ours, theirs, "headers of {:?}", show());
            assert_eq!(
                our_facts(&head, input),
                httparse_facts(&req),
                "{:?}",
                show()
            );
        }
        (Ok(Status::Partial), Ok(httparse::Status::Partial)) | (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) => assert_explained(input, e),
        // httparse refuses a version prefix other than "HTTP/1." at once; we wait for the
        // whole version to tell 505 (HTTP/2.0) from 400 (garbage).
        (Ok(Status::Partial), Err(httparse::Error::Version)) => {
            let line = input.split(|&b| b == b' ').nth(2).unwrap_or_default();
            assert!(line.len() < 8 && line.starts_with(b"HTTP/"), "{:?}", show());
        }
        (ours, theirs) => panic!("ours {ours:?}, httparse {theirs:?} on {:?}", show()),
    }
}

/// Panics unless `input` breaks the rule that `e` names.
pub fn assert_explained(input: &[u8], e: ParseError) {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let complete = matches!(req.parse(input), Ok(httparse::Status::Complete(_)));
    assert!(
        breaks(e, input, complete.then_some(&req)),
        "{e:?} ({}) not explained by {:?}",
        e.label(),
        String::from_utf8_lossy(input)
    );
}

/// Whether `input` breaks the rule `e` names: each rule re-checked on its own, from the raw
/// bytes or from httparse's view of a complete head.
fn breaks(e: ParseError, input: &[u8], req: Option<&httparse::Request<'_, '_>>) -> bool {
    let lines = || input.split(|&b| b == b'\n');
    let request_line = || {
        let start = input
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(0);
        let line = &input[start..];
        &line[..line
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(line.len())]
    };
    // The complete header lines seen so far (httparse may still be waiting for the rest).
    let headers = |name: &str| -> Vec<&[u8]> {
        let body = input
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(0);
        let mut lines: Vec<&[u8]> = input[body..].split(|&b| b == b'\n').skip(1).collect();
        lines.pop(); // the last piece has no line feed yet
        lines
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                let colon = l.iter().position(|&b| b == b':')?;
                l[..colon]
                    .eq_ignore_ascii_case(name.as_bytes())
                    .then(|| l[colon + 1..].trim_ascii())
            })
            .collect()
    };
    let version = || {
        request_line()
            .rsplit(|&b| b == b' ')
            .next()
            .unwrap_or_default()
    };
    let host_chars = |v: &[u8]| {
        v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
    };
    match e {
        ParseError::BareLineEnding => input.iter().enumerate().any(|(i, &b)| {
            let before = i.checked_sub(1).and_then(|j| input.get(j));
            (b == b'\n' && before != Some(&b'\r'))
                || (b == b'\r' && input.get(i + 1).is_some_and(|&n| n != b'\n'))
        }),
        ParseError::RequestLineTooLong => request_line().len() > Limits::DEFAULT.max_request_line,
        ParseError::HeadTooLarge => input.len() >= Limits::DEFAULT.max_head,
        ParseError::InvalidTarget => {
            let mut parts = request_line().split(|&b| b == b' ');
            let method = parts.next().unwrap_or_default();
            let target = parts.next().unwrap_or_default();
            !target_is_valid(method, target)
        }
        ParseError::MissingHost => {
            req.is_some() && version() == b"HTTP/1.1" && headers("host").is_empty()
        }
        ParseError::DuplicateHost => headers("host").len() > 1,
        ParseError::InvalidHost => headers("host").iter().any(|v| !host_chars(v)),
        ParseError::InvalidContentLength => {
            let values: Vec<&[u8]> = headers("content-length")
                .into_iter()
                .flat_map(|v| v.split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .collect();
            values
                .iter()
                .any(|v| v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit))
                || values.windows(2).any(|w| w[0] != w[1])
        }
        ParseError::ContentLengthWithTransferEncoding => {
            !headers("content-length").is_empty() && !headers("transfer-encoding").is_empty()
        }
        ParseError::InvalidTransferEncoding | ParseError::UnknownTransferCoding => {
            let codings: Vec<Vec<u8>> = headers("transfer-encoding")
                .into_iter()
                .flat_map(|v| v.split(|&b| b == b','))
                .map(|c| {
                    c.split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii()
                        .to_ascii_lowercase()
                })
                .filter(|c| !c.is_empty())
                .collect();
            let known = |c: &Vec<u8>| {
                [
                    &b"chunked"[..],
                    b"gzip",
                    b"x-gzip",
                    b"deflate",
                    b"compress",
                    b"x-compress",
                ]
                .contains(&c.as_slice())
            };
            if e == ParseError::UnknownTransferCoding {
                headers("transfer-encoding").iter().any(|v| {
                    v.split(|&b| b == b',').any(|c| {
                        let c = c.trim_ascii();
                        !c.is_empty()
                            && !known(
                                &c.split(|&b| b == b';')
                                    .next()
                                    .unwrap_or_default()
                                    .trim_ascii()
                                    .to_ascii_lowercase(),
                            )
                    })
                })
            } else {
                let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
                let malformed = headers("transfer-encoding")
                    .iter()
                    .any(|v| v.split(|&b| b == b',').all(|e| e.trim_ascii().is_empty()))
                    || headers("transfer-encoding").iter().any(|v| {
                        v.split(|&b| b == b',')
                            .map(<[u8]>::trim_ascii)
                            .filter(|e| !e.is_empty())
                            .any(|e| {
                                let mut parts = e.splitn(2, |&b| b == b';');
                                let name = parts.next().unwrap_or_default().trim_ascii();
                                name.is_empty()
                                    || !name.iter().all(tchar)
                                    || (name.eq_ignore_ascii_case(b"chunked")
                                        && parts.next().is_some())
                            })
                    });
                malformed
                    || codings.last().map(Vec::as_slice) != Some(b"chunked")
                    || codings
                        .iter()
                        .filter(|c| c.as_slice() == b"chunked")
                        .count()
                        != 1
                    || version() == b"HTTP/1.0"
            }
        }
        ParseError::InvalidHeaderValue => lines().skip(1).any(|l| {
            l.iter().enumerate().any(|(i, &b)| {
                (b < 0x20 && b != b'\t' && !(b == b'\r' && i + 1 == l.len())) || b == 0x7f
            })
        }),
        ParseError::ObsFold => lines()
            .skip(1)
            .any(|l| l.first().is_some_and(|&b| b == b' ' || b == b'\t')),
        ParseError::WhitespaceBeforeColon => lines().skip(1).any(|l| {
            let name = &l[..l.iter().position(|&b| b == b':').unwrap_or(0)];
            name.last().is_some_and(|&b| b == b' ' || b == b'\t')
        }),
        _ => false,
    }
}

/// RFC 9112 §3.2, re-stated: origin-form, `*` for OPTIONS, authority-form for CONNECT, or an
/// absolute URI without userinfo; VCHAR only.
fn target_is_valid(method: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return false;
    }
    let host = |a: &[u8]| {
        !a.is_empty()
            && a.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
    };
    if method == b"CONNECT" {
        return host(target) && target.contains(&b':');
    }
    if target[0] == b'/' {
        return true;
    }
    if target == b"*" {
        return method == b"OPTIONS";
    }
    let Some(sep) = target.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let scheme = &target[..sep];
    let rest = &target[sep + 3..];
    let authority = &rest[..rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len())];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && host(authority)
        && rest.get(authority.len()) != Some(&b'#')
}
