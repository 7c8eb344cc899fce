//! The strict rules of RFC 9112/9110 the codec enforces, one raw-bytes case each, checking the
//! exact error and the status a client gets for it.

use ringgate::http::{
    encode, BodyDecoder, Framing, Limits, Method, ParseError, RequestHead, ResponseHead, Status,
    TargetForm, Version,
};

fn parse(raw: &[u8]) -> Result<Status, ParseError> {
    RequestHead::new(&Limits::DEFAULT).parse(raw, &Limits::DEFAULT)
}

fn parse_with(raw: &[u8], limits: Limits) -> Result<Status, ParseError> {
    RequestHead::new(&limits).parse(raw, &limits)
}

/// Each case: a request head, the error it must give, and that error's status code.
macro_rules! rejects {
    ($($name:ident: $raw:expr => $err:ident, $status:expr;)*) => {$(
        #[test]
        fn $name() {
            let raw: &[u8] = $raw;
            assert_eq!(parse(raw), Err(ParseError::$err), "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(ParseError::$err.status(), $status);
        }
    )*};
}

rejects! {
    content_length_and_transfer_encoding:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        => ContentLengthWithTransferEncoding, 400;
    transfer_encoding_then_content_length:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        => ContentLengthWithTransferEncoding, 400;
    differing_content_lengths:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        => InvalidContentLength, 400;
    differing_content_length_list:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n" => InvalidContentLength, 400;
    non_numeric_content_length:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n" => InvalidContentLength, 400;
    signed_content_length:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n" => InvalidContentLength, 400;
    empty_content_length:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n" => InvalidContentLength, 400;
    overflowing_content_length:
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
        => InvalidContentLength, 400;
    transfer_encoding_not_ending_in_chunked:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
        => InvalidTransferEncoding, 400;
    transfer_encoding_gzip_only:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"
        => InvalidTransferEncoding, 400;
    transfer_encoding_chunked_twice:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        => InvalidTransferEncoding, 400;
    transfer_encoding_empty:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n" => InvalidTransferEncoding, 400;
    transfer_encoding_line_without_coding:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n"
        => InvalidTransferEncoding, 400;
    transfer_encoding_in_http10:
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => InvalidTransferEncoding, 400;
    transfer_coding_with_junk_after_name:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked x\r\n\r\n"
        => InvalidTransferEncoding, 400;
    chunked_with_parameter:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n"
        => InvalidTransferEncoding, 400;
    unknown_transfer_coding:
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo, chunked\r\n\r\n"
        => UnknownTransferCoding, 501;
    obs_fold:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n" => ObsFold, 400;
    obs_fold_with_tab:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n" => ObsFold, 400;
    space_before_colon:
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n" => WhitespaceBeforeColon, 400;
    tab_before_colon:
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 0\r\n\r\n" => WhitespaceBeforeColon, 400;
    bare_lf_after_request_line:
        b"GET / HTTP/1.1\nHost: a\r\n\r\n" => BareLineEnding, 400;
    bare_lf_after_header:
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n" => BareLineEnding, 400;
    bare_lf_ending_head:
        b"GET / HTTP/1.1\r\nHost: a\r\n\n" => BareLineEnding, 400;
    bare_lf_before_request_line:
        b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" => BareLineEnding, 400;
    bare_cr_after_request_line:
        b"GET / HTTP/1.1\rHost: a\r\n\r\n" => BareLineEnding, 400;
    bare_cr_ending_head:
        b"GET / HTTP/1.1\r\nHost: a\r\n\rX" => BareLineEnding, 400;
    invalid_method_char:
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidMethod, 400;
    empty_method:
        b" / HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidMethod, 400;
    invalid_header_name_char:
        b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n" => InvalidHeaderName, 400;
    non_ascii_header_name:
        b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n" => InvalidHeaderName, 400;
    empty_header_name:
        b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n" => InvalidHeaderName, 400;
    header_without_colon:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n" => MissingColon, 400;
    nul_in_header_value:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n" => InvalidHeaderValue, 400;
    cr_in_header_value:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n" => InvalidHeaderValue, 400;
    lf_in_header_value:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc: d\r\n\r\n" => BareLineEnding, 400;
    other_control_in_header_value:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x1bc\r\n\r\n" => InvalidHeaderValue, 400;
    del_in_header_value:
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n" => InvalidHeaderValue, 400;
    http11_without_host:
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n" => MissingHost, 400;
    http11_with_two_hosts:
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => DuplicateHost, 400;
    http10_with_two_hosts:
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n" => DuplicateHost, 400;
    host_with_space:
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => InvalidHost, 400;
    host_with_userinfo:
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n" => InvalidHost, 400;
    http20_version:
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" => UnsupportedVersion, 505;
    http12_version:
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" => UnsupportedVersion, 505;
    http09_version:
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n" => UnsupportedVersion, 505;
    malformed_version:
        b"GET / HTTP/1.x\r\nHost: a\r\n\r\n" => InvalidVersion, 400;
    lowercase_version:
        b"GET / http/1.1\r\nHost: a\r\n\r\n" => InvalidVersion, 400;
    long_version:
        b"GET / HTTP/1.10\r\nHost: a\r\n\r\n" => InvalidVersion, 400;
    missing_version:
        b"GET /\r\nHost: a\r\n\r\n" => BadRequestLine, 400;
    double_space_in_request_line:
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    control_in_target:
        b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    non_ascii_in_target:
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    asterisk_for_get:
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    connect_with_origin_form:
        b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    authority_form_for_get:
        b"GET a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
    absolute_form_with_userinfo:
        b"GET http://u@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n" => InvalidTarget, 400;
}

#[test]
fn request_line_over_limit_is_414() {
    let mut raw = b"GET /".to_vec();
    raw.resize(8 * 1024 + 10, b'a');
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(parse(&raw), Err(ParseError::RequestLineTooLong));
    assert_eq!(ParseError::RequestLineTooLong.status(), 414);
}

#[test]
fn incomplete_request_line_over_limit_is_414_before_the_line_ends() {
    let mut raw = b"GET /".to_vec();
    raw.resize(8 * 1024 + 10, b'a');
    assert_eq!(parse(&raw), Err(ParseError::RequestLineTooLong));
}

#[test]
fn request_line_at_limit_is_accepted() {
    let mut raw = b"GET /".to_vec();
    raw.resize(8 * 1024 - b" HTTP/1.1".len(), b'a');
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(matches!(parse(&raw), Ok(Status::Complete(_))));
}

#[test]
fn head_over_limit_is_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    while raw.len() < 33 * 1024 {
        raw.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    let limits = Limits {
        max_headers: 10_000,
        ..Limits::DEFAULT
    };
    raw.extend_from_slice(b"\r\n");
    assert_eq!(parse_with(&raw, limits), Err(ParseError::HeadTooLarge));
    // Still incomplete but already over the limit: no point waiting for the rest.
    let cut = &raw[..raw.len() - 2];
    assert_eq!(parse_with(cut, limits), Err(ParseError::HeadTooLarge));
    assert_eq!(ParseError::HeadTooLarge.status(), 431);
}

#[test]
fn too_many_headers_is_431() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_eq!(parse(&raw), Err(ParseError::TooManyHeaders));
    assert_eq!(ParseError::TooManyHeaders.status(), 431);
}

#[test]
fn exactly_max_headers_is_accepted() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..99 {
        raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    assert_eq!(parse(&raw), Ok(Status::Complete(raw.len())));
}

#[test]
fn every_prefix_of_a_valid_head_is_partial() {
    let raw =
        b"\r\nPOST /a?b=c HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3\r\nX-Tab: a\tb \r\n\r\n";
    for cut in 0..raw.len() {
        assert_eq!(parse(&raw[..cut]), Ok(Status::Partial), "cut at {cut}");
    }
    assert_eq!(parse(raw), Ok(Status::Complete(raw.len())));
}

#[test]
fn facts_of_a_request_head() {
    let raw = b"POST http://api.example:8080/v1/x?y=1 HTTP/1.1\r\nHost: other\r\n\
Content-Length: 7, 7\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
Expect: 100-continue\r\nUpgrade: websocket\r\n\r\nbody...";
    let mut head = RequestHead::new(&Limits::DEFAULT);
    let end = raw.len() - 7;
    assert_eq!(head.parse(raw, &Limits::DEFAULT), Ok(Status::Complete(end)));
    assert_eq!(head.method, Method::Post);
    assert_eq!(head.form, TargetForm::Absolute);
    assert_eq!(head.path.of(raw), b"/v1/x?y=1");
    assert_eq!(head.host(raw), b"api.example:8080");
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.framing(), Framing::Length(7));
    assert!(head.keep_alive());
    assert!(head.fields.expect_continue);
    assert!(!head.wants_upgrade(), "Upgrade without Connection: upgrade");
    let secret = head
        .fields
        .headers
        .iter()
        .find(|h| h.name.of(raw) == b"X-Secret");
    assert!(secret.is_some_and(|h| h.kind.is_hop_by_hop()));
}

#[test]
fn target_forms() {
    let cases: [(&[u8], TargetForm); 4] = [
        (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", TargetForm::Origin),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            TargetForm::Asterisk,
        ),
        (
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            TargetForm::Authority,
        ),
        (
            b"GET https://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            TargetForm::Absolute,
        ),
    ];
    for (raw, form) in cases {
        let head = complete_request(raw);
        assert_eq!(head.form, form);
    }
}

#[test]
fn http10_defaults_to_close_and_needs_no_host() {
    let mut head = RequestHead::new(&Limits::DEFAULT);
    let raw = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(
        head.parse(raw, &Limits::DEFAULT),
        Ok(Status::Complete(raw.len()))
    );
    assert!(!head.keep_alive());
    let raw = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    assert_eq!(
        head.parse(raw, &Limits::DEFAULT),
        Ok(Status::Complete(raw.len()))
    );
    assert!(head.keep_alive());
}

/// `raw` parsed as a complete request head.
fn complete_request(raw: &[u8]) -> RequestHead {
    let mut head = RequestHead::new(&Limits::DEFAULT);
    let status = head.parse(raw, &Limits::DEFAULT);
    assert!(matches!(status, Ok(Status::Complete(_))), "{status:?}");
    head
}

fn response(raw: &[u8]) -> (Result<Status, ParseError>, ResponseHead) {
    let mut head = ResponseHead::new(&Limits::DEFAULT);
    (head.parse(raw, &Limits::DEFAULT), head)
}

#[test]
fn response_framing_and_no_body_cases() {
    let (r, head) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    assert!(matches!(r, Ok(Status::Complete(_))));
    assert_eq!(head.framing(Method::Get), Framing::Length(12));
    assert_eq!(head.framing(Method::Head), Framing::Length(0));
    let (_, head) = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(head.framing(Method::Get), Framing::Chunked);
    let (_, head) = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(head.framing(Method::Get), Framing::Eof);
    let (_, head) = response(b"HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(head.framing(Method::Get), Framing::Eof);
    assert!(!head.keep_alive());
    for status in [b"204", b"304", b"100", b"101"] {
        let mut raw = b"HTTP/1.1 ".to_vec();
        raw.extend_from_slice(status);
        raw.extend_from_slice(b" X\r\nContent-Length: 5\r\n\r\n");
        let (r, head) = response(&raw);
        assert!(matches!(r, Ok(Status::Complete(_))));
        assert_eq!(head.framing(Method::Get), Framing::Length(0));
    }
    let (r, head) = response(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(matches!(r, Ok(Status::Complete(_))) && head.is_informational());
}

#[test]
fn response_status_lines() {
    let (r, head) = response(b"HTTP/1.1 404\r\n\r\n");
    assert!(matches!(r, Ok(Status::Complete(_))));
    assert_eq!(head.status, 404);
    assert!(head.reason.is_empty());
    assert_eq!(
        response(b"HTTP/1.1 20 OK\r\n\r\n").0,
        Err(ParseError::BadStatusLine)
    );
    assert_eq!(
        response(b"HTTP/1.1 2000 OK\r\n\r\n").0,
        Err(ParseError::BadStatusLine)
    );
    assert_eq!(
        response(b"HTTX/1.1 200 OK\r\n\r\n").0,
        Err(ParseError::BadStatusLine)
    );
    assert_eq!(
        response(b"HTTP/1.1 200 OK\n\r\n").0,
        Err(ParseError::BareLineEnding)
    );
    assert_eq!(
        response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n").0,
        Err(ParseError::ContentLengthWithTransferEncoding)
    );
    assert_eq!(
        response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").0,
        Err(ParseError::InvalidContentLength)
    );
    assert_eq!(response(b"HTTP/1.1 200 O").0, Ok(Status::Partial));
}

/// Feeds `body` to a chunked decoder in pieces of `step` bytes; returns the data and the error.
fn dechunk(body: &[u8], step: usize) -> (Vec<u8>, Result<usize, ParseError>) {
    let mut dec = BodyDecoder::new(Framing::Chunked, &Limits::DEFAULT);
    let mut data = Vec::new();
    let mut have = Vec::new();
    let mut consumed_total = 0;
    for piece in body.chunks(step) {
        have.extend_from_slice(piece);
        loop {
            match dec.decode(&have) {
                Err(e) => return (data, Err(e)),
                Ok(d) => {
                    data.extend_from_slice(&have[d.data.clone()]);
                    have.drain(..d.consumed);
                    consumed_total += d.consumed;
                    if d.done {
                        return (data, Ok(consumed_total));
                    }
                    if d.consumed == 0 || have.is_empty() {
                        break;
                    }
                }
            }
        }
    }
    (data, Ok(usize::MAX))
}

#[test]
fn chunked_body_in_every_split() {
    let body = b"4;name=\"v\"\r\nWiki\r\n5 ;x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    for step in 1..body.len() {
        let (data, r) = dechunk(body, step);
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
        assert_eq!(
            r,
            Ok(body.len() - 4),
            "step {step}: stops before the next request"
        );
    }
}

macro_rules! chunk_rejects {
    ($($name:ident: $raw:expr => $err:ident;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(dechunk($raw, 1).1, Err(ParseError::$err));
            assert_eq!(dechunk($raw, 64).1, Err(ParseError::$err));
            assert_eq!(ParseError::$err.status(), 400);
        }
    )*};
}

chunk_rejects! {
    chunk_size_with_plus: b"+5\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_with_minus: b"-5\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_with_inner_space: b"1 0\r\n0123456789abcdef\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_with_leading_space: b" 5\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_hex_prefix: b"0x5\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_seventeen_digits: b"00000000000000005\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_empty: b"\r\nhello\r\n0\r\n\r\n" => InvalidChunkSize;
    chunk_size_bare_lf: b"5\nhello\r\n0\r\n\r\n" => BareLineEnding;
    chunk_data_without_crlf: b"5\r\nhelloX\r\n0\r\n\r\n" => InvalidChunkTerminator;
    chunk_data_bare_lf: b"5\r\nhello\n0\r\n\r\n" => InvalidChunkTerminator;
    chunk_extension_with_control: b"5;a\x01\r\nhello\r\n0\r\n\r\n" => InvalidChunkExtension;
    trailer_without_colon: b"0\r\nX-T\r\n\r\n" => InvalidTrailer;
    trailer_obs_fold: b"0\r\nX-T: a\r\n b\r\n\r\n" => InvalidTrailer;
    trailer_bare_lf: b"0\r\nX-T: a\n\r\n" => BareLineEnding;
}

#[test]
fn sixteen_digit_chunk_size_is_accepted() {
    let (data, r) = dechunk(b"0000000000000005\r\nhello\r\n0\r\n\r\n", 3);
    assert_eq!((data.as_slice(), r.is_ok()), (&b"hello"[..], true));
}

#[test]
fn oversized_chunk_extension_and_trailers() {
    let mut ext = b"5;".to_vec();
    ext.resize(2 + Limits::DEFAULT.max_chunk_ext + 1, b'a');
    ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(dechunk(&ext, 100).1, Err(ParseError::InvalidChunkExtension));
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < Limits::DEFAULT.max_trailers + 10 {
        trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
    }
    trailers.extend_from_slice(b"\r\n");
    assert_eq!(dechunk(&trailers, 100).1, Err(ParseError::InvalidTrailer));
}

#[test]
fn length_body_stops_at_its_end() {
    let mut dec = BodyDecoder::new(Framing::Length(5), &Limits::DEFAULT);
    let d = dec.decode(b"hel").unwrap();
    assert_eq!((d.consumed, d.data, d.done), (3, 0..3, false));
    let d = dec.decode(b"loGET").unwrap();
    assert_eq!((d.consumed, d.data, d.done), (2, 0..2, true));
    assert!(dec.complete_at_close());
    let dec = BodyDecoder::new(Framing::Length(5), &Limits::DEFAULT);
    assert!(
        !dec.complete_at_close(),
        "a close before the length is a truncation"
    );
}

#[test]
fn forwarded_request_head() {
    let raw =
        b"GET /v1/users?id=7 HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Hop\r\n\
X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n\
X-Forwarded-Proto: https\r\nVia: 1.1 edge\r\nAccept: */*\r\nContent-Length: 0\r\nUpgrade: h2c\r\n\
Expect: 100-continue\r\n\r\n";
    let head = complete_request(raw);
    let mut out = Vec::new();
    let fwd = encode::Forward {
        path: b"/users?id=7",
        host: b"backend:9001",
        client_addr: b"127.0.0.1",
        proto: b"http",
        tunnel: false,
        extra: b"",
        omit: None,
    };
    encode::request_head(&mut out, raw, &head, &fwd);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /users?id=7 HTTP/1.1\r\nHost: backend:9001\r\nAccept: */*\r\nContent-Length: 0\r\n\
X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
X-Forwarded-Host: api.example\r\nVia: 1.1 edge, 1.1 ringgate\r\n\r\n"
    );
}

/// Kept fields are copied as received, a run of adjacent ones at a time: odd but valid
/// spacing survives, fields dropped between kept ones leave nothing behind, and the result
/// parses to the same values.
#[test]
fn kept_fields_are_copied_as_received_around_dropped_ones() {
    let raw = b"GET / HTTP/1.1\r\nX-A:a1\r\nHost: h\r\nX-B:\t b1 \t\r\nX-C: c1\r\n\
Connection: close\r\nTE: trailers\r\nX-D: d1\r\n\r\n";
    let head = complete_request(raw);
    let mut out = Vec::new();
    let fwd = encode::Forward {
        path: b"/",
        host: b"h",
        client_addr: b"127.0.0.1",
        proto: b"http",
        tunnel: false,
        extra: b"",
        omit: Some(&|name: &[u8]| name.eq_ignore_ascii_case(b"x-c")),
    };
    encode::request_head(&mut out, raw, &head, &fwd);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.starts_with("GET / HTTP/1.1\r\nHost: h\r\nX-A:a1\r\nX-B:\t b1 \t\r\nX-D: d1\r\n"),
        "{text:?}"
    );
    let again = complete_request(&out);
    assert_eq!(again.fields.get(&out, b"x-a"), Some(&b"a1"[..]));
    assert_eq!(again.fields.get(&out, b"x-b"), Some(&b"b1"[..]));
    assert_eq!(again.fields.get(&out, b"x-c"), None);
    assert_eq!(again.fields.get(&out, b"te"), None);
    assert_eq!(again.fields.get(&out, b"x-d"), Some(&b"d1"[..]));
}

#[test]
fn transfer_encoding_is_forwarded_as_one_normalised_list() {
    let raw = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip,, \r\nTransfer-Encoding: chunked,\r\n\r\n";
    let head = complete_request(raw);
    assert_eq!(head.framing(), Framing::Chunked);
    let mut out = Vec::new();
    let fwd = encode::Forward {
        path: b"/u",
        host: b"a",
        client_addr: b"127.0.0.1",
        proto: b"http",
        tunnel: false,
        extra: b"",
        omit: None,
    };
    encode::request_head(&mut out, raw, &head, &fwd);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("\r\nTransfer-Encoding: gzip, chunked\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("Transfer-Encoding").count(), 1, "{text}");
}

#[test]
fn forwarded_response_heads() {
    let raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX-A: 1\r\n\r\n";
    let (_, head) = response(raw);
    let mut out = Vec::new();
    let reply = encode::Reply {
        body: encode::BodyOut::Chunked,
        keep_alive: true,
        client_version: Version::Http11,
        tunnel: false,
        extra: b"",
        omit: None,
    };
    encode::response_head(&mut out, raw, &head, &reply);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    );

    // An HTTP/1.0 client gets the chunked body unframed, until close.
    out.clear();
    let reply = encode::Reply {
        body: encode::BodyOut::UntilClose,
        keep_alive: false,
        client_version: Version::Http10,
        ..reply
    };
    encode::response_head(&mut out, raw, &head, &reply);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n"
    );

    // A close-delimited upstream body is chunked for a keep-alive client.
    let raw = b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\n";
    let (_, head) = response(raw);
    out.clear();
    let reply = encode::Reply {
        body: encode::BodyOut::Chunked,
        keep_alive: true,
        client_version: Version::Http10,
        tunnel: false,
        extra: b"",
        omit: None,
    };
    encode::response_head(&mut out, raw, &head, &reply);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    );
}

#[test]
fn generated_error_responses() {
    for status in [
        400u16, 404, 408, 413, 414, 429, 431, 501, 502, 503, 504, 505,
    ] {
        let mut out = Vec::new();
        encode::error(&mut out, status, false);
        let (r, head) = response(&out);
        let Ok(Status::Complete(n)) = r else {
            panic!("{status}: {r:?}")
        };
        assert_eq!(head.status, status);
        assert!(!head.keep_alive());
        let body = &out[n..];
        assert_eq!(
            head.framing(Method::Get),
            Framing::Length(body.len() as u64)
        );
        assert!(body.starts_with(status.to_string().as_bytes()));
    }
}

#[test]
fn chunk_framing() {
    let mut out = Vec::new();
    encode::chunk_head(&mut out, 0x1a2b);
    out.extend_from_slice(&[b'x'; 0x1a2b]);
    out.extend_from_slice(encode::CHUNK_END);
    out.extend_from_slice(encode::LAST_CHUNK);
    let (data, r) = dechunk(&out, 4096);
    assert_eq!((data.len(), r), (0x1a2b, Ok(out.len())));
}
