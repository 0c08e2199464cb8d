//! The method grammar (`warren::protocol::spec`) against the field codec
//! (`warren::protocol::wire`), two independent readings of the same spec: whatever
//! arguments the check accepts, the codec decodes field by field to exactly
//! the last byte; encoded again, the values are accepted by the check and
//! decode to the same values. (Not to the same bytes: the codec reads a
//! boolean as 0 or 1, `L` as `l`, and a table key that is not UTF-8 with
//! replacement characters; warren forwards a client's own bytes, never a
//! re-encoding.) A key whose replacement characters make it longer than a
//! short string can be is outside what the codec can write back, so such
//! inputs are skipped.
//!
//! Input: class (2 bytes), method (2 bytes), then the arguments.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren::protocol::spec::{self, Field, MethodSpec};
use warren::protocol::wire::{put_long_bytes, put_table, Decoder, FieldTable, FieldValue};

/// One decoded argument; consecutive bits are one octet.
#[derive(Debug, PartialEq)]
enum Value {
    Number(u64),
    Short(Vec<u8>),
    Long(Vec<u8>),
    Table(FieldTable),
}

/// The arguments, each with its wire type.
fn decode(spec: &MethodSpec, args: &[u8]) -> Vec<(Field, Value)> {
    let mut d = Decoder::new(args);
    let mut values = Vec::new();
    let mut bits_in_octet = 0u8;
    for &field in spec.fields {
        if field == Field::Bit {
            bits_in_octet = (bits_in_octet + 1) % 8;
            if bits_in_octet != 1 {
                continue;
            }
        } else {
            bits_in_octet = 0;
        }
        let value = match field {
            Field::Octet | Field::Bit => Value::Number(d.u8().expect("octet").into()),
            Field::Short => Value::Number(d.u16().expect("short").into()),
            Field::Long => Value::Number(d.u32().expect("long").into()),
            Field::LongLong | Field::Timestamp => Value::Number(d.u64().expect("longlong")),
            Field::ShortStr => Value::Short(d.short_bytes().expect("shortstr").to_vec()),
            Field::LongStr => Value::Long(d.long_bytes().expect("longstr").to_vec()),
            Field::Table => Value::Table(d.table().expect("an accepted table decodes")),
        };
        values.push((field, value));
    }
    assert!(
        d.is_empty(),
        "the check accepted bytes the codec leaves over"
    );
    values
}

/// Every table key, nested ones included, fits a short string again.
fn keys_fit(values: &[(Field, Value)]) -> bool {
    fn table(t: &FieldTable) -> bool {
        t.iter().all(|(key, value)| key.len() <= 255 && field(value))
    }
    fn field(value: &FieldValue) -> bool {
        match value {
            FieldValue::Table(t) => table(t),
            FieldValue::Array(items) => items.iter().all(field),
            _ => true,
        }
    }
    values.iter().all(|(_, value)| match value {
        Value::Table(t) => table(t),
        _ => true,
    })
}

fn encode(values: &[(Field, Value)]) -> BytesMut {
    let mut out = BytesMut::new();
    for (field, value) in values {
        match (field, value) {
            (Field::Octet | Field::Bit, Value::Number(n)) => out.put_u8(*n as u8),
            (Field::Short, Value::Number(n)) => out.put_u16(*n as u16),
            (Field::Long, Value::Number(n)) => out.put_u32(*n as u32),
            (_, Value::Number(n)) => out.put_u64(*n),
            (_, Value::Short(s)) => {
                out.put_u8(s.len() as u8);
                out.put_slice(s);
            }
            (_, Value::Long(s)) => put_long_bytes(&mut out, s),
            (_, Value::Table(t)) => put_table(&mut out, t),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [c0, c1, m0, m1, args @ ..] = data else {
        return;
    };
    let Some(spec) = spec::lookup(
        u16::from_be_bytes([*c0, *c1]),
        u16::from_be_bytes([*m0, *m1]),
    ) else {
        return;
    };
    if spec::check_arguments(spec, args).is_err() {
        return;
    }
    let values = decode(spec, args);
    if !keys_fit(&values) {
        return;
    }
    let again = encode(&values);
    assert!(
        spec::check_arguments(spec, &again).is_ok(),
        "{}: its own encoding is refused",
        spec.name
    );
    assert_eq!(decode(spec, &again), values, "{}", spec.name);
});
