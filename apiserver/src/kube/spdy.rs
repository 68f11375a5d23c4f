//! SPDY/3.1 framing, the part of it Kubernetes' streaming protocols use (kubectl port-forward
//! speaks it through `moby/spdystream`): SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING,
//! GOAWAY, HEADERS, WINDOW_UPDATE and DATA frames, and the name/value header blocks compressed
//! with zlib and SPDY/3's preset dictionary — one compression context per direction for the
//! whole connection, each block ended with a sync flush.
//!
//! No maintained crate serves this: `spdy-mux` is a client-side multiplexer only, the older
//! `spdy` crates are abandoned. zlib itself is `flate2` on `zlib-rs` (miniz_oxide, flate2's
//! default, cannot take a preset dictionary).
//!
//! Wire layout (all big-endian):
//!
//! ```text
//! control: 1 | version(15) | type(16) | flags(8) | length(24) | payload
//! data:    0 | stream-id(31)          | flags(8) | length(24) | payload
//! ```
//!
//! spdystream does no flow control (it ignores WINDOW_UPDATE and sends none), so neither do we:
//! those frames are parsed and dropped by the session.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// SPDY/3's zlib dictionary for header blocks (the SPDY/3 draft, section 2.6.10.1).
pub const DICTIONARY: &[u8] = include_bytes!("spdy_dictionary.bin");

pub const VERSION: u16 = 3;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// The largest frame payload we accept (24-bit lengths allow 16 MiB; spdystream writes data
/// frames as large as the caller's buffer, io.Copy's 32 KiB in practice).
pub const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;
/// The largest decompressed header block we accept.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header names and values, names lower-case as SPDY requires. A value holding several
/// values separates them with NUL, as on the wire.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Parsed only far enough to skip.
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3 does not define (the spec says: ignore it).
    Unknown {
        frame_type: u16,
    },
}

impl Frame {
    /// The first header of that name (case-insensitive), for SYN_STREAM, SYN_REPLY, HEADERS.
    pub fn header(&self, name: &str) -> Option<&str> {
        let hs = match self {
            Frame::SynStream { headers, .. }
            | Frame::SynReply { headers, .. }
            | Frame::Headers { headers, .. } => headers,
            _ => return None,
        };
        hs.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("unsupported SPDY version {0} (this server speaks SPDY/3.1)")]
    Version(u16),
    #[error("{what} frame of {len} bytes is malformed")]
    Malformed { what: &'static str, len: usize },
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("header block: {0}")]
    Headers(String),
    #[error("zlib: {0}")]
    Zlib(String),
}

/// Reads frames from a byte buffer; holds the connection's header decompression context.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            inflate: Decompress::new(true),
        }
    }

    /// The next whole frame at the start of `buf` (consumed), or `None` if more bytes are
    /// needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let mut frame = buf.split_to(8 + len);
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: frame.freeze(),
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame_type = (first & 0xffff) as u16;
        let malformed = |what| SpdyError::Malformed { what, len };
        Ok(Some(match frame_type {
            TYPE_SYN_STREAM => {
                if len < 10 {
                    return Err(malformed("SYN_STREAM"));
                }
                let stream_id = frame.get_u32() & 0x7fff_ffff;
                let associated_to = frame.get_u32() & 0x7fff_ffff;
                let priority = frame.get_u8() >> 5;
                let _slot = frame.get_u8();
                let headers = self.headers(&frame)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                if len < 4 {
                    return Err(malformed("SYN_REPLY/HEADERS"));
                }
                let stream_id = frame.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&frame)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if len != 8 {
                    return Err(malformed("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: frame.get_u32() & 0x7fff_ffff,
                    status: frame.get_u32(),
                }
            }
            TYPE_SETTINGS => Frame::Settings,
            TYPE_PING => {
                if len != 4 {
                    return Err(malformed("PING"));
                }
                Frame::Ping {
                    id: frame.get_u32(),
                }
            }
            TYPE_GOAWAY => {
                // SPDY/3 has a status code; SPDY/2-style 4-byte GOAWAYs are tolerated.
                if len < 4 {
                    return Err(malformed("GOAWAY"));
                }
                let last_good_stream_id = frame.get_u32() & 0x7fff_ffff;
                let status = if frame.remaining() >= 4 {
                    frame.get_u32()
                } else {
                    0
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                if len != 8 {
                    return Err(malformed("WINDOW_UPDATE"));
                }
                Frame::WindowUpdate {
                    stream_id: frame.get_u32() & 0x7fff_ffff,
                    delta: frame.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        }))
    }

    fn headers(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let block = self.inflate(compressed)?;
        parse_header_block(&block)
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(1024));
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            let r =
                self.inflate
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.inflate.total_in() - before_in) as usize;
            match r {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::TooLarge(out.len()));
            }
            let progressed = consumed > 0 && out.len() > before_out;
            // Done once every input byte is in and zlib left room in the output (nothing more
            // pending).
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed && self.inflate.total_in() == before_in && out.len() == before_out {
                if consumed >= input.len() {
                    return Ok(out);
                }
                return Err(SpdyError::Zlib(
                    "no progress inflating a header block".into(),
                ));
            }
        }
    }
}

/// Parse an uncompressed name/value block.
pub fn parse_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |m: &str| SpdyError::Headers(m.to_string());
    if b.len() < 4 {
        return Err(bad("shorter than its count"));
    }
    let n = b.get_u32() as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let mut field = || -> Result<String, SpdyError> {
            if b.len() < 4 {
                return Err(bad("truncated length"));
            }
            let len = b.get_u32() as usize;
            if b.len() < len {
                return Err(bad("truncated name or value"));
            }
            let s = String::from_utf8_lossy(&b[..len]).into_owned();
            b.advance(len);
            Ok(s)
        };
        let name = field()?.to_ascii_lowercase();
        let value = field()?;
        out.push((name, value));
    }
    Ok(out)
}

/// An uncompressed name/value block (names lower-cased).
pub fn header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32(headers.len() as u32);
    for (n, v) in headers {
        b.put_u32(n.len() as u32);
        b.extend(n.bytes().map(|c| c.to_ascii_lowercase()));
        b.put_u32(v.len() as u32);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Writes frames; holds the connection's header compression context.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        let mut deflate = Compress::new(Compression::best(), true);
        // Only fails on a stream already in use; this one is new.
        let _ = deflate.set_dictionary(DICTIONARY);
        Encoder { deflate }
    }

    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(u32::from(*flags) << 24 | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.deflate(&header_block(headers))?;
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(*stream_id & 0x7fff_ffff);
                out.put_u32(*associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0);
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let ty = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.deflate(&header_block(headers))?;
                control(out, ty, *flags, 4 + block.len());
                out.put_u32(*stream_id & 0x7fff_ffff);
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(*stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings => {
                control(out, TYPE_SETTINGS, 0, 4);
                out.put_u32(0);
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(*last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(*stream_id & 0x7fff_ffff);
                out.put_u32(*delta & 0x7fff_ffff);
            }
            Frame::Unknown { frame_type } => control(out, *frame_type, 0, 0),
        }
        Ok(())
    }

    fn deflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            consumed += (self.deflate.total_in() - before_in) as usize;
            if consumed >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn control(out: &mut BytesMut, ty: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(ty);
    out.put_u32(u32::from(flags) << 24 | (len as u32 & 0x00ff_ffff));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_frame_type_round_trips_through_one_compression_context() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 2,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: h(&[("x", "a\0b")]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 65536,
            },
        ];
        let mut enc = Encoder::new();
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        // Fed a byte at a time, the decoder waits for whole frames.
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    fn hex(s: &str) -> BytesMut {
        let b: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        BytesMut::from(&b[..])
    }

    fn kubectl_pair(stream_type: &str) -> Headers {
        h(&[
            ("streamtype", stream_type),
            ("port", "8080"),
            ("requestid", "0"),
        ])
    }

    #[test]
    fn kubectls_own_syn_streams_decode_with_the_shared_context() {
        // Captured from kubectl 1.32 port-forward pod/web 0:8080 (Go's compress/zlib): the
        // error stream, its FIN, and the data stream, whose header block only makes sense
        // with the first one's compression history.
        let mut wire = hex(
            "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0\
             808614cb45e01c60616061c0c0c0c0590489c64c50f2663400000000ffff\
             0000000101000000\
             800300010000001800000003000000000000c2aa19540e2512d60b000000ffff",
        );
        let mut dec = Decoder::new();
        let f = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: kubectl_pair("error"),
            }
        );
        assert_eq!(
            dec.decode(&mut wire).unwrap().unwrap(),
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new()
            }
        );
        let f = dec.decode(&mut wire).unwrap().unwrap();
        assert_eq!(f.header("streamType"), Some("data"));
        assert_eq!(f.header("requestID"), Some("0"));
        assert!(wire.is_empty());
    }

    #[test]
    fn header_blocks_compressed_by_c_zlib_decode_and_ours_carry_the_dictionary_id() {
        // Python's zlib (C zlib 1.2.13), level 9 with the SPDY dictionary, sync-flushed: the
        // same pair of header blocks with keys in sorted order.
        let blocks = [
            "78f9e3c6a7c202253a48f95b044eea16061606409ab308125f99a074cc68004e892545a989b9d0c28635\
             15141500000000ffff",
            "225333a8a44a04000000ffff",
        ];
        let mut dec = Decoder::new();
        let want = [
            h(&[
                ("port", "8080"),
                ("requestid", "0"),
                ("streamtype", "error"),
            ]),
            h(&[("port", "8080"), ("requestid", "0"), ("streamtype", "data")]),
        ];
        for (i, b) in blocks.iter().enumerate() {
            let block = hex(b);
            let mut frame = BytesMut::new();
            control(&mut frame, TYPE_SYN_REPLY, 0, 4 + block.len());
            frame.put_u32(1 + 2 * i as u32);
            frame.extend_from_slice(&block);
            let f = dec.decode(&mut frame).unwrap().unwrap();
            assert_eq!(
                f,
                Frame::SynReply {
                    stream_id: 1 + 2 * i as u32,
                    flags: 0,
                    headers: want[i].clone(),
                }
            );
        }
        // Our encoder starts its stream with the dictionary's id, as SPDY/3 peers expect.
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: want[0].clone(),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[12..18], &[0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn header_names_are_lower_cased_and_looked_up_case_insensitively() {
        let block = header_block(&h(&[("StreamType", "data"), ("Port", "80")]));
        let parsed = parse_header_block(&block).unwrap();
        assert_eq!(parsed, h(&[("streamtype", "data"), ("port", "80")]));
        let f = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: parsed,
        };
        assert_eq!(f.header("streamType"), Some("data"));
        assert_eq!(f.header("requestID"), None);
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        // The zlib dictionary id SPDY/3 peers put in their header (adler32 of the dictionary).
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &c in DICTIONARY {
            a = (a + u32::from(c)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn malformed_and_foreign_frames_are_errors_not_panics() {
        let mut dec = Decoder::new();
        // SPDY/2 control frame.
        let mut b = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut b), Err(SpdyError::Version(2)));
        // PING with a 3-byte payload.
        let mut b = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 3, 0, 0, 1][..]);
        assert!(matches!(
            dec.decode(&mut b),
            Err(SpdyError::Malformed { .. })
        ));
        // SYN_STREAM whose header block is not zlib.
        let mut b = BytesMut::from(
            &[
                0x80, 0x03, 0x00, 0x01, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        );
        assert!(matches!(dec.decode(&mut b), Err(SpdyError::Zlib(_))));
        // Truncated: waits.
        let mut b = BytesMut::from(&[0x00, 0x00, 0x00, 0x01, 0, 0, 0, 9, 1][..]);
        assert_eq!(dec.decode(&mut b), Ok(None));
        // Unknown control type: skipped, not an error.
        let mut b = BytesMut::from(&[0x80, 0x03, 0x00, 0x42, 0, 0, 0, 1, 9][..]);
        assert_eq!(
            dec.decode(&mut b),
            Ok(Some(Frame::Unknown { frame_type: 0x42 }))
        );
    }
}
