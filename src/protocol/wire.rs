//! AMQP 0-9-1 argument encoding: short/long strings and field tables.
//!
//! Only connection negotiation needs tables (client properties, capabilities,
//! AMQPLAIN credentials), so values are decoded into a small owned tree; the
//! data path never touches this module.

use bytes::{BufMut, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed method arguments: {0}")]
pub struct DecodeError(pub &'static str);

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    LongStr(Vec<u8>),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
    Bytes(Vec<u8>),
}

pub type FieldTable = Vec<(String, FieldValue)>;

/// Looks up `key` in a table.
pub fn table_get<'a>(table: &'a [(String, FieldValue)], key: &str) -> Option<&'a FieldValue> {
    table.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// How deeply tables and arrays may nest. Real client properties nest two
/// levels; the limit keeps a hostile Start-Ok from exhausting the stack.
const MAX_NESTING: u8 = 16;

/// A cursor over method arguments.
pub struct Decoder<'a> {
    buf: &'a [u8],
    depth: u8,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, depth: 0 }
    }

    fn nested(&self, buf: &'a [u8]) -> Result<Self, DecodeError> {
        if self.depth >= MAX_NESTING {
            return Err(DecodeError("tables nested too deeply"));
        }
        Ok(Decoder {
            buf,
            depth: self.depth + 1,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What is left, undecoded.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub fn short_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    pub fn short_str(&mut self) -> Result<String, DecodeError> {
        Ok(String::from_utf8_lossy(self.short_bytes()?).into_owned())
    }

    pub fn long_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn table(&mut self) -> Result<FieldTable, DecodeError> {
        let raw = self.long_bytes()?;
        self.nested(raw)?.entries()
    }

    fn entries(&mut self) -> Result<FieldTable, DecodeError> {
        let mut table = Vec::new();
        while !self.is_empty() {
            let key = self.short_str()?;
            table.push((key, self.value()?));
        }
        Ok(table)
    }

    fn value(&mut self) -> Result<FieldValue, DecodeError> {
        Ok(match self.u8()? {
            b't' => FieldValue::Bool(self.u8()? != 0),
            b'b' => FieldValue::I8(self.u8()? as i8),
            b'B' => FieldValue::U8(self.u8()?),
            b's' => FieldValue::I16(self.u16()? as i16),
            b'u' => FieldValue::U16(self.u16()?),
            b'I' => FieldValue::I32(self.u32()? as i32),
            b'i' => FieldValue::U32(self.u32()?),
            b'l' | b'L' => FieldValue::I64(self.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(self.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(self.u64()?)),
            b'D' => FieldValue::Decimal(self.u8()?, self.u32()?),
            b'S' => FieldValue::LongStr(self.long_bytes()?.to_vec()),
            b'x' => FieldValue::Bytes(self.long_bytes()?.to_vec()),
            b'A' => {
                let raw = self.long_bytes()?;
                let mut inner = self.nested(raw)?;
                let mut items = Vec::new();
                while !inner.is_empty() {
                    items.push(inner.value()?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(self.u64()?),
            b'F' => FieldValue::Table(self.table()?),
            b'V' => FieldValue::Void,
            _ => return Err(DecodeError("unknown field type")),
        })
    }
}

/// Decodes the entries of a table whose 4-byte length prefix is already
/// stripped (the AMQPLAIN response has this shape).
pub fn decode_table_entries(raw: &[u8]) -> Result<FieldTable, DecodeError> {
    Decoder::new(raw).entries()
}

pub fn put_short_str(buf: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(255)];
    buf.put_u8(s.len() as u8);
    buf.put_slice(s);
}

pub fn put_long_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

pub fn put_table(buf: &mut BytesMut, table: &FieldTable) {
    let len_at = buf.len();
    buf.put_u32(0);
    for (key, value) in table {
        put_short_str(buf, key);
        put_value(buf, value);
    }
    let len = (buf.len() - len_at - 4) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_value(buf: &mut BytesMut, value: &FieldValue) {
    match value {
        FieldValue::Bool(v) => {
            buf.put_u8(b't');
            buf.put_u8(*v as u8);
        }
        FieldValue::I8(v) => {
            buf.put_u8(b'b');
            buf.put_i8(*v);
        }
        FieldValue::U8(v) => {
            buf.put_u8(b'B');
            buf.put_u8(*v);
        }
        FieldValue::I16(v) => {
            buf.put_u8(b's');
            buf.put_i16(*v);
        }
        FieldValue::U16(v) => {
            buf.put_u8(b'u');
            buf.put_u16(*v);
        }
        FieldValue::I32(v) => {
            buf.put_u8(b'I');
            buf.put_i32(*v);
        }
        FieldValue::U32(v) => {
            buf.put_u8(b'i');
            buf.put_u32(*v);
        }
        FieldValue::I64(v) => {
            buf.put_u8(b'l');
            buf.put_i64(*v);
        }
        FieldValue::F32(v) => {
            buf.put_u8(b'f');
            buf.put_f32(*v);
        }
        FieldValue::F64(v) => {
            buf.put_u8(b'd');
            buf.put_f64(*v);
        }
        FieldValue::Decimal(scale, v) => {
            buf.put_u8(b'D');
            buf.put_u8(*scale);
            buf.put_u32(*v);
        }
        FieldValue::LongStr(v) => {
            buf.put_u8(b'S');
            put_long_bytes(buf, v);
        }
        FieldValue::Bytes(v) => {
            buf.put_u8(b'x');
            put_long_bytes(buf, v);
        }
        FieldValue::Array(items) => {
            buf.put_u8(b'A');
            let len_at = buf.len();
            buf.put_u32(0);
            for item in items {
                put_value(buf, item);
            }
            let len = (buf.len() - len_at - 4) as u32;
            buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        FieldValue::Timestamp(v) => {
            buf.put_u8(b'T');
            buf.put_u64(*v);
        }
        FieldValue::Table(t) => {
            buf.put_u8(b'F');
            put_table(buf, t);
        }
        FieldValue::Void => buf.put_u8(b'V'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trip_covers_every_type() {
        let table: FieldTable = vec![
            ("t".into(), FieldValue::Bool(true)),
            ("b".into(), FieldValue::I8(-3)),
            ("B".into(), FieldValue::U8(200)),
            ("s".into(), FieldValue::I16(-300)),
            ("u".into(), FieldValue::U16(60000)),
            ("I".into(), FieldValue::I32(-70000)),
            ("i".into(), FieldValue::U32(4_000_000_000)),
            ("l".into(), FieldValue::I64(-1 << 40)),
            ("f".into(), FieldValue::F32(1.5)),
            ("d".into(), FieldValue::F64(-2.25)),
            ("D".into(), FieldValue::Decimal(2, 12345)),
            ("S".into(), FieldValue::LongStr(b"hello".to_vec())),
            ("x".into(), FieldValue::Bytes(vec![0, 1, 2])),
            (
                "A".into(),
                FieldValue::Array(vec![FieldValue::Bool(false), FieldValue::U8(1)]),
            ),
            ("T".into(), FieldValue::Timestamp(1_700_000_000)),
            (
                "F".into(),
                FieldValue::Table(vec![("inner".into(), FieldValue::Void)]),
            ),
        ];
        let mut buf = BytesMut::new();
        put_table(&mut buf, &table);
        let mut d = Decoder::new(&buf);
        assert_eq!(d.table().unwrap(), table);
        assert!(d.is_empty());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let levels = 1_000;
        let mut inner = Vec::new();
        for _ in 0..levels {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        let mut entry = vec![1, b'k'];
        entry.extend_from_slice(&inner);
        assert_eq!(
            decode_table_entries(&entry),
            Err(DecodeError("tables nested too deeply"))
        );
    }

    #[test]
    fn truncated_and_unknown_inputs_are_errors_not_panics() {
        let mut buf = BytesMut::new();
        put_table(
            &mut buf,
            &vec![("k".into(), FieldValue::LongStr(b"v".to_vec()))],
        );
        for cut in 0..buf.len() {
            let _ = Decoder::new(&buf[..cut]).table();
        }
        assert_eq!(
            decode_table_entries(&[1, b'k', b'?']),
            Err(DecodeError("unknown field type"))
        );
    }
}
