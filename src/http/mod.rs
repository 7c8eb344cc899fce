//! The HTTP/1.1 codec: a strict, sans-io leaf. Bytes in, decisions out; no I/O, no runtime,
//! no allocation per message (heads are parsed into per-connection structs that keep their
//! capacity, heads are written into reused buffers).
//!
//! - [`parse`]: request and response heads, with framing facts;
//! - [`body`]: body framing and the incremental chunked decoder;
//! - [`encode`]: heads to forward, generated responses, chunk framing;
//! - [`limits`]: every bound a peer can run into; [`error`]: what breaking a rule costs.

pub mod body;
pub(crate) mod chars;
pub mod encode;
pub mod error;
pub mod limits;
pub mod parse;

pub use body::{BodyDecoder, Decoded, Framing};
pub use error::ParseError;
pub use limits::Limits;
pub use parse::{
    HeadScan, Header, HeaderKind, Method, RequestHead, ResponseHead, Span, Status, TargetForm,
    Version,
};
