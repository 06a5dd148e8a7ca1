//! The subset of SPDY/3.1 that `kubectl port-forward` speaks (Go's spdystream, under client-go's
//! `httpstream`): frames, and header blocks compressed by one zlib stream per direction with
//! SPDY's preset dictionary.
//!
//! Every control frame is decoded (a header block that is skipped would leave the
//! decompressor out of step with the peer's compressor), and those port-forwarding needs are
//! encoded: `SYN_REPLY`, `RST_STREAM`, `PING`, `GOAWAY`, `DATA`; `SYN_STREAM` too, for clients
//! in tests. Flow control (`WINDOW_UPDATE`) is read and ignored, as spdystream does.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The SPDY version this codec speaks.
const VERSION: u16 = 3;
/// `FLAG_FIN` of data and stream frames: the sender's half of the stream ends.
const FLAG_FIN: u8 = 0x01;
/// The largest frame accepted: data frames of Go's writers are at most 32 KiB, header
/// blocks a few hundred bytes.
const MAX_FRAME_LENGTH: usize = 1 << 20;
/// The largest header block accepted once decompressed (a zlib bomb stops here).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// `RST_STREAM` status: the peer broke the protocol on this stream.
pub const PROTOCOL_ERROR: u32 = 1;
/// `RST_STREAM` status: the stream is not wanted (an unknown stream type).
pub const REFUSED_STREAM: u32 = 3;

/// A header block's names (lower case on the wire) and values.
pub type Headers = Vec<(String, String)>;

/// One SPDY frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// `SETTINGS`, `WINDOW_UPDATE` and unknown control types: read past, acted on by no one.
    Ignored {
        kind: u16,
    },
}

/// Why the byte stream is no SPDY/3 a session can go on with; none is retryable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPDY version {0} is not spoken (only 3)")]
    UnsupportedVersion(u16),
    #[error("a frame of {length} bytes is over the limit of {MAX_FRAME_LENGTH}")]
    FrameTooLong { length: usize },
    #[error("a control frame of type {kind} is too short ({length} bytes)")]
    Truncated { kind: u16, length: usize },
    #[error("a header block does not decompress: {0}")]
    Inflate(String),
    #[error("a header block is malformed")]
    MalformedHeaders,
    #[error("a header block is over {MAX_HEADER_BLOCK} bytes once decompressed")]
    HeadersTooLong,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The preset zlib dictionary of SPDY/3 header blocks (draft 3, section 2.6.10.1), 1423 bytes
/// as Go's spdy package has it: length-prefixed header names and values, then common values.
pub const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\
    \x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\
    \x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\
    \x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\
    \x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    100101201202205206300302303304305306307402405406407408409410411412413414415416417502\
    504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Re\
    quest401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Impl\
    emented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00\
    :00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,imag\
    e/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate\
    max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Decodes the frames one peer sends: its header blocks share one zlib stream.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// Takes the first whole frame off `buffer`; `None` until one has arrived.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>> {
        if buffer.len() < 8 {
            return Ok(None);
        }
        let length =
            usize::from(buffer[5]) << 16 | usize::from(buffer[6]) << 8 | usize::from(buffer[7]);
        if length > MAX_FRAME_LENGTH {
            return Err(Error::FrameTooLong { length });
        }
        if buffer.len() < 8 + length {
            return Ok(None);
        }
        let head = buffer.split_to(8);
        let mut payload = buffer.split_to(length).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream_id,
                fin,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize| match length >= n {
            true => Ok(()),
            false => Err(Error::Truncated { kind, length }),
        };
        let frame = match kind {
            1 => {
                // Stream id, associated stream id, priority and slot, then the header block.
                need(10)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                payload.advance(6);
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers: self.headers(&payload)?,
                }
            }
            2 | 8 => {
                need(4)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&payload)?;
                match kind {
                    2 => Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    },
                    _ => Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    },
                }
            }
            3 => {
                need(8)?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            6 => {
                need(4)?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            7 => {
                need(8)?;
                Frame::GoAway {
                    last_good_stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            kind => Frame::Ignored { kind },
        };
        Ok(Some(frame))
    }

    /// Decompresses and parses one header block.
    fn headers(&mut self, block: &[u8]) -> Result<Headers> {
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_HEADER_BLOCK {
                    return Err(Error::HeadersTooLong);
                }
                plain.reserve(plain.len().max(256));
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            match self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync)
            {
                Ok(_) => {}
                // The first block asks for the dictionary once its zlib header is read.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Inflate(e.to_string()))?;
                }
                Err(e) => return Err(Error::Inflate(e.to_string())),
            }
            let consumed = usize::try_from(self.inflate.total_in() - in_before)
                .expect("consumed no more than the block");
            input = &input[consumed..];
            let progressed = consumed > 0 || self.inflate.total_out() > out_before;
            if input.is_empty() && plain.len() < plain.capacity() {
                break;
            }
            if !progressed && plain.len() < plain.capacity() {
                return Err(Error::Inflate(
                    "the block ends inside compressed data".into(),
                ));
            }
        }
        parse_headers(&plain)
    }
}

/// Encodes the frames one peer sends: its header blocks share one zlib stream.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .expect("a fresh compressor takes a dictionary");
        Self { deflate }
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                put_flags_and_length(out, *fin, data.len());
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => {
                let block = self.header_block(headers);
                let mut payload = BytesMut::with_capacity(10 + block.len());
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(0);
                payload.put_u16(0);
                payload.put_slice(&block);
                put_control(out, 1, *fin, &payload);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = match frame {
                    Frame::SynReply { .. } => 2,
                    _ => 8,
                };
                let block = self.header_block(headers);
                let mut payload = BytesMut::with_capacity(4 + block.len());
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_slice(&block);
                put_control(out, kind, *fin, &payload);
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                payload[4..].copy_from_slice(&status.to_be_bytes());
                put_control(out, 3, false, &payload);
            }
            Frame::Ping { id } => put_control(out, 6, false, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                payload[4..].copy_from_slice(&status.to_be_bytes());
                put_control(out, 7, false, &payload);
            }
            Frame::Ignored { kind } => put_control(out, *kind, false, &[]),
        }
    }

    /// `headers` as a compressed header block, flushed so the peer can read it whole.
    fn header_block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.put_u32(u32::try_from(headers.len()).expect("few headers"));
        for (name, value) in headers {
            for text in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                plain.put_u32(u32::try_from(text.len()).expect("a short header"));
                plain.put_slice(text.as_bytes());
            }
        }
        let mut block = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            if block.capacity() - block.len() < 64 {
                block.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut block, FlushCompress::Sync)
                .expect("compressing into memory cannot fail");
            let consumed =
                usize::try_from(self.deflate.total_in() - before).expect("consumed the input");
            input = &input[consumed..];
            // A sync flush is complete once it stops short of the room it was given.
            if input.is_empty() && block.len() < block.capacity() {
                return block;
            }
        }
    }
}

fn put_control(out: &mut BytesMut, kind: u16, fin: bool, payload: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    put_flags_and_length(out, fin, payload.len());
    out.put_slice(payload);
}

fn put_flags_and_length(out: &mut BytesMut, fin: bool, length: usize) {
    let length = u32::try_from(length).expect("frames are short");
    let flags = if fin { FLAG_FIN } else { 0 };
    out.put_u32(u32::from(flags) << 24 | (length & 0x00ff_ffff));
}

/// A decompressed header block: a count, then length-prefixed names and values. Repeated
/// values of one name are NUL-separated in one value: they stay so, only the first is read.
fn parse_headers(mut block: &[u8]) -> Result<Headers> {
    fn text<'a>(block: &mut &'a [u8]) -> Result<&'a str> {
        if block.len() < 4 {
            return Err(Error::MalformedHeaders);
        }
        let length = usize::try_from(block.get_u32()).map_err(|_| Error::MalformedHeaders)?;
        if block.len() < length {
            return Err(Error::MalformedHeaders);
        }
        let (text, rest) = block.split_at(length);
        *block = rest;
        std::str::from_utf8(text).map_err(|_| Error::MalformedHeaders)
    }
    if block.len() < 4 {
        return Err(Error::MalformedHeaders);
    }
    let count = block.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = text(&mut block)?.to_ascii_lowercase();
        let value = text(&mut block)?.to_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// The first value of header `name` (lower case).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        let mut wire = BytesMut::new();
        for frame in frames {
            encoder.encode(frame, &mut wire);
        }
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.decode(&mut wire).unwrap() {
            decoded.push(frame);
        }
        assert!(wire.is_empty(), "{} bytes left over", wire.len());
        decoded
    }

    fn stream_headers(kind: &str, port: &str, request: &str) -> Headers {
        vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), port.into()),
            ("requestid".into(), request.into()),
        ]
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The id a zlib stream names its preset dictionary by (what Go's reader checks).
        let mut adler = (1u32, 0u32);
        for byte in DICTIONARY {
            adler.0 = (adler.0 + u32::from(*byte)) % 65521;
            adler.1 = (adler.1 + adler.0) % 65521;
        }
        assert_eq!(adler.1 << 16 | adler.0, 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_and_header_blocks_share_one_zlib_stream() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                fin: false,
                headers: stream_headers("error", "8080", "0"),
            },
            Frame::SynStream {
                stream_id: 3,
                fin: false,
                headers: stream_headers("data", "8080", "0"),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: Vec::new(),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: REFUSED_STREAM,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::Headers {
                stream_id: 5,
                fin: true,
                headers: stream_headers("data", "9090", "1"),
            },
        ];
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn the_wire_layout_is_spdy3s() {
        let mut wire = BytesMut::new();
        let mut encoder = Encoder::default();
        encoder.encode(&Frame::Ping { id: 5 }, &mut wire);
        assert_eq!(&wire[..], [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5]);
        wire.clear();
        encoder.encode(
            &Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"hi"),
            },
            &mut wire,
        );
        assert_eq!(&wire[..], [0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        wire.clear();
        encoder.encode(
            &Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Vec::new(),
            },
            &mut wire,
        );
        assert_eq!(&wire[..4], [0x80, 3, 0, 2]);
        // The zlib header announces a preset dictionary (FDICT) and names it.
        let block = &wire[12..];
        assert_eq!(block[1] & 0x20, 0x20, "FDICT");
        assert_eq!(block[2..6], 0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let mut wire = BytesMut::new();
        Encoder::default().encode(
            &Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"abcdef"),
            },
            &mut wire,
        );
        let mut decoder = Decoder::default();
        let mut partial = BytesMut::from(&wire[..9]);
        assert_eq!(decoder.decode(&mut partial).unwrap(), None);
        partial.extend_from_slice(&wire[9..]);
        assert!(matches!(
            decoder.decode(&mut partial).unwrap(),
            Some(Frame::Data { data, .. }) if data == "abcdef"
        ));
    }

    #[test]
    fn other_versions_and_garbage_are_errors() {
        let mut spdy2 = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            Decoder::default().decode(&mut spdy2),
            Err(Error::UnsupportedVersion(2))
        ));
        let mut garbage = BytesMut::from(
            &[
                0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2,
            ][..],
        );
        assert!(matches!(
            Decoder::default().decode(&mut garbage),
            Err(Error::Inflate(_))
        ));
    }

    #[test]
    fn repeated_values_read_as_the_first() {
        let headers = vec![("port".to_owned(), "8080\09090".to_owned())];
        assert_eq!(header(&headers, "port"), Some("8080"));
        assert_eq!(header(&headers, "requestid"), None);
    }
}
