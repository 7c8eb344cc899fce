//! ringgate's own HTTP codec as the gateway applies it to a proxied GET, for the relays'
//! `codec` mode: the request head parsed and written upstream (Host, X-Forwarded-For and
//! -Proto, Via, hop-by-hop fields dropped), the response head parsed and written back with the
//! body after it. No routing, pool, balancer, timers, metrics or request id.

use ringgate::http::encode::{self, BodyOut, Forward, Reply};
use ringgate::http::{Limits, RequestHead, ResponseHead, Status, Version};

/// One connection's parsed heads, made once and reused, as ringgate does.
pub struct Heads {
    request: RequestHead,
    response: ResponseHead,
}

impl Heads {
    pub fn new() -> Heads {
        Heads {
            request: RequestHead::new(&Limits::DEFAULT),
            response: ResponseHead::new(&Limits::DEFAULT),
        }
    }

    /// `data` (one read) through the codec into `out`: the request head for the upstream when
    /// it came from the client, else the response head and body. `None` when the head is not
    /// whole in this read or the codec refuses it.
    pub fn rewrite(&mut self, data: &[u8], from_client: bool, out: &mut Vec<u8>) -> Option<()> {
        out.clear();
        if from_client {
            let Ok(Status::Complete(_)) = self.request.parse(data, &Limits::DEFAULT) else {
                return None;
            };
            let forward = Forward {
                path: self.request.path.of(data),
                host: self.request.host(data),
                client_addr: b"127.0.0.1",
                proto: b"http",
                tunnel: false,
                extra: b"",
                omit: None,
            };
            encode::request_head(out, data, &self.request, &forward);
        } else {
            let Ok(Status::Complete(len)) = self.response.parse(data, &Limits::DEFAULT) else {
                return None;
            };
            let reply = Reply {
                body: BodyOut::Length(self.response.fields.content_length.unwrap_or(0)),
                keep_alive: true,
                client_version: Version::Http11,
                tunnel: false,
                extra: b"",
                omit: None,
            };
            encode::response_head(out, data, &self.response, &reply);
            out.extend_from_slice(data.get(len..)?);
        }
        Some(())
    }
}
