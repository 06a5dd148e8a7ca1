//! Protobuf's wire format: varints, tags, and the four wire types Kubernetes' messages use.

use super::{Error, Result};

/// A field's value as it is on the wire, before the schema gives it a meaning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl WireValue<'_> {
    pub fn wire_type(&self) -> u8 {
        match self {
            WireValue::Varint(_) => 0,
            WireValue::Fixed64(_) => 1,
            WireValue::Bytes(_) => 2,
            WireValue::Fixed32(_) => 5,
        }
    }
}

/// Reads one message's fields in order.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or(Error::Truncated("varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::VarintTooLong)
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        let bytes = self.take(8, "fixed64")?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < len {
            return Err(Error::Truncated(what));
        }
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(taken)
    }

    /// The next field's number and value; `None` at the end of the message.
    pub fn field(&mut self) -> Option<Result<(u64, WireValue<'a>)>> {
        (!self.buf.is_empty()).then(|| self.read_field())
    }

    fn read_field(&mut self) -> Result<(u64, WireValue<'a>)> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => WireValue::Fixed64(self.fixed64()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Error::Truncated("bytes"))?;
                WireValue::Bytes(self.take(len, "length-delimited field")?)
            }
            5 => WireValue::Fixed32(u32::from_le_bytes(
                self.take(4, "fixed32")?.try_into().unwrap_or_default(),
            )),
            // 3 and 4 are proto1 groups, which no Kubernetes message has.
            other => return Err(Error::WireType(other as u8)),
        };
        Ok((tag >> 3, value))
    }
}

/// Builds one message.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    fn tag(&mut self, number: u32, wire_type: u8) {
        self.varint((u64::from(number) << 3) | u64::from(wire_type));
    }

    pub fn varint_field(&mut self, number: u32, value: u64) {
        self.tag(number, 0);
        self.varint(value);
    }

    pub fn fixed64_field(&mut self, number: u32, value: u64) {
        self.tag(number, 1);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn bytes_field(&mut self, number: u32, bytes: &[u8]) {
        self.tag(number, 2);
        self.varint(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }
}
