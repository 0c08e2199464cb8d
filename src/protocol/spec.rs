//! The AMQP 0-9-1 method grammar, with RabbitMQ's extensions, and an exact
//! check of method arguments, field tables and content headers against it.
//!
//! Why this exists: many clients share one upstream connection, and RabbitMQ
//! answers a frame it cannot decode with a connection-level error that would
//! close every one of them. So every method a client sends is checked here,
//! byte for byte, before it may reach the broker: every argument present,
//! every table well formed in the syntax the broker parses, nothing left
//! over. The check walks the bytes without copying or allocating, so it
//! costs a few nanoseconds on the publish path.
//!
//! A leaf module: it knows the spec and nothing of warren.

use std::fmt;

/// One argument's wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Octet,
    Short,
    Long,
    LongLong,
    /// One bit; consecutive bits share octets, eight to an octet.
    Bit,
    ShortStr,
    LongStr,
    Timestamp,
    Table,
}

/// Who may send a method, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client, on a channel (not channel 0).
    ClientOnChannel,
    /// A client, on channel 0 (connection class, warren answers these).
    ClientOnConnection,
    /// Only the server, as far as RabbitMQ is concerned: it answers a
    /// client's with 503 (that includes channel.flow-ok and
    /// basic.cancel-ok, replies to requests RabbitMQ never sends).
    Server,
}

/// One method of the protocol.
#[derive(Debug, PartialEq, Eq)]
pub struct MethodSpec {
    pub class: u16,
    pub method: u16,
    pub name: &'static str,
    pub fields: &'static [Field],
    pub sender: Sender,
    /// Followed by a content header and bodies.
    pub content: bool,
}

use super::ids::*;
use Field::*;
use Sender::*;

macro_rules! spec {
    ($id:ident, $name:literal, $sender:ident, [$($field:ident),*] $(, $content:ident)?) => {
        MethodSpec {
            class: $id.0,
            method: $id.1,
            name: $name,
            fields: &[$($field),*],
            sender: $sender,
            content: spec!(@content $($content)?),
        }
    };
    (@content) => { false };
    (@content content) => { true };
}

/// Every method of AMQP 0-9-1 as RabbitMQ speaks it (connection.blocked,
/// update-secret, exchange.bind, basic.nack and confirm included), sorted by
/// class and method id. Both directions are listed: warren also reads the
/// broker's replies, and the server-only ones tell a client's mistake (503)
/// from a method that does not exist (540).
#[rustfmt::skip]
const TABLE: &[MethodSpec] = &[
    spec!(CONNECTION_START, "connection.start", Server, [Octet, Octet, Table, LongStr, LongStr]),
    spec!(CONNECTION_START_OK, "connection.start-ok", ClientOnConnection, [Table, ShortStr, LongStr, ShortStr]),
    spec!(CONNECTION_SECURE, "connection.secure", Server, [LongStr]),
    spec!(CONNECTION_SECURE_OK, "connection.secure-ok", ClientOnConnection, [LongStr]),
    spec!(CONNECTION_TUNE, "connection.tune", Server, [Short, Long, Short]),
    spec!(CONNECTION_TUNE_OK, "connection.tune-ok", ClientOnConnection, [Short, Long, Short]),
    spec!(CONNECTION_OPEN, "connection.open", ClientOnConnection, [ShortStr, ShortStr, Bit]),
    spec!(CONNECTION_OPEN_OK, "connection.open-ok", Server, [ShortStr]),
    spec!(CONNECTION_CLOSE, "connection.close", ClientOnConnection, [Short, ShortStr, Short, Short]),
    spec!(CONNECTION_CLOSE_OK, "connection.close-ok", ClientOnConnection, []),
    spec!(CONNECTION_BLOCKED, "connection.blocked", Server, [ShortStr]),
    spec!(CONNECTION_UNBLOCKED, "connection.unblocked", Server, []),
    spec!(CONNECTION_UPDATE_SECRET, "connection.update-secret", ClientOnConnection, [LongStr, ShortStr]),
    spec!(CONNECTION_UPDATE_SECRET_OK, "connection.update-secret-ok", Server, []),
    spec!(CHANNEL_OPEN, "channel.open", ClientOnChannel, [ShortStr]),
    spec!(CHANNEL_OPEN_OK, "channel.open-ok", Server, [LongStr]),
    spec!(CHANNEL_FLOW, "channel.flow", ClientOnChannel, [Bit]),
    spec!(CHANNEL_FLOW_OK, "channel.flow-ok", Server, [Bit]),
    spec!(CHANNEL_CLOSE, "channel.close", ClientOnChannel, [Short, ShortStr, Short, Short]),
    spec!(CHANNEL_CLOSE_OK, "channel.close-ok", ClientOnChannel, []),
    spec!(ACCESS_REQUEST, "access.request", ClientOnChannel, [ShortStr, Bit, Bit, Bit, Bit, Bit]),
    spec!(ACCESS_REQUEST_OK, "access.request-ok", Server, [Short]),
    spec!(EXCHANGE_DECLARE, "exchange.declare", ClientOnChannel, [Short, ShortStr, ShortStr, Bit, Bit, Bit, Bit, Bit, Table]),
    spec!(EXCHANGE_DECLARE_OK, "exchange.declare-ok", Server, []),
    spec!(EXCHANGE_DELETE, "exchange.delete", ClientOnChannel, [Short, ShortStr, Bit, Bit]),
    spec!(EXCHANGE_DELETE_OK, "exchange.delete-ok", Server, []),
    spec!(EXCHANGE_BIND, "exchange.bind", ClientOnChannel, [Short, ShortStr, ShortStr, ShortStr, Bit, Table]),
    spec!(EXCHANGE_BIND_OK, "exchange.bind-ok", Server, []),
    spec!(EXCHANGE_UNBIND, "exchange.unbind", ClientOnChannel, [Short, ShortStr, ShortStr, ShortStr, Bit, Table]),
    spec!(EXCHANGE_UNBIND_OK, "exchange.unbind-ok", Server, []),
    spec!(QUEUE_DECLARE, "queue.declare", ClientOnChannel, [Short, ShortStr, Bit, Bit, Bit, Bit, Bit, Table]),
    spec!(QUEUE_DECLARE_OK, "queue.declare-ok", Server, [ShortStr, Long, Long]),
    spec!(QUEUE_BIND, "queue.bind", ClientOnChannel, [Short, ShortStr, ShortStr, ShortStr, Bit, Table]),
    spec!(QUEUE_BIND_OK, "queue.bind-ok", Server, []),
    spec!(QUEUE_PURGE, "queue.purge", ClientOnChannel, [Short, ShortStr, Bit]),
    spec!(QUEUE_PURGE_OK, "queue.purge-ok", Server, [Long]),
    spec!(QUEUE_DELETE, "queue.delete", ClientOnChannel, [Short, ShortStr, Bit, Bit, Bit]),
    spec!(QUEUE_DELETE_OK, "queue.delete-ok", Server, [Long]),
    spec!(QUEUE_UNBIND, "queue.unbind", ClientOnChannel, [Short, ShortStr, ShortStr, ShortStr, Table]),
    spec!(QUEUE_UNBIND_OK, "queue.unbind-ok", Server, []),
    spec!(BASIC_QOS, "basic.qos", ClientOnChannel, [Long, Short, Bit]),
    spec!(BASIC_QOS_OK, "basic.qos-ok", Server, []),
    spec!(BASIC_CONSUME, "basic.consume", ClientOnChannel, [Short, ShortStr, ShortStr, Bit, Bit, Bit, Bit, Table]),
    spec!(BASIC_CONSUME_OK, "basic.consume-ok", Server, [ShortStr]),
    spec!(BASIC_CANCEL, "basic.cancel", ClientOnChannel, [ShortStr, Bit]),
    spec!(BASIC_CANCEL_OK, "basic.cancel-ok", Server, [ShortStr]),
    spec!(BASIC_PUBLISH, "basic.publish", ClientOnChannel, [Short, ShortStr, ShortStr, Bit, Bit], content),
    spec!(BASIC_RETURN, "basic.return", Server, [Short, ShortStr, ShortStr, ShortStr], content),
    spec!(BASIC_DELIVER, "basic.deliver", Server, [ShortStr, LongLong, Bit, ShortStr, ShortStr], content),
    spec!(BASIC_GET, "basic.get", ClientOnChannel, [Short, ShortStr, Bit]),
    spec!(BASIC_GET_OK, "basic.get-ok", Server, [LongLong, Bit, ShortStr, ShortStr, Long], content),
    spec!(BASIC_GET_EMPTY, "basic.get-empty", Server, [ShortStr]),
    spec!(BASIC_ACK, "basic.ack", ClientOnChannel, [LongLong, Bit]),
    spec!(BASIC_REJECT, "basic.reject", ClientOnChannel, [LongLong, Bit]),
    spec!(BASIC_RECOVER_ASYNC, "basic.recover-async", ClientOnChannel, [Bit]),
    spec!(BASIC_RECOVER, "basic.recover", ClientOnChannel, [Bit]),
    spec!(BASIC_RECOVER_OK, "basic.recover-ok", Server, []),
    spec!(BASIC_NACK, "basic.nack", ClientOnChannel, [LongLong, Bit, Bit]),
    spec!(CONFIRM_SELECT, "confirm.select", ClientOnChannel, [Bit]),
    spec!(CONFIRM_SELECT_OK, "confirm.select-ok", Server, []),
    spec!(TX_SELECT, "tx.select", ClientOnChannel, []),
    spec!(TX_SELECT_OK, "tx.select-ok", Server, []),
    spec!(TX_COMMIT, "tx.commit", ClientOnChannel, []),
    spec!(TX_COMMIT_OK, "tx.commit-ok", Server, []),
    spec!(TX_ROLLBACK, "tx.rollback", ClientOnChannel, []),
    spec!(TX_ROLLBACK_OK, "tx.rollback-ok", Server, []),
];

pub static METHODS: &[MethodSpec] = TABLE;

/// Position of a class in [`INDEX`].
const fn class_slot(class: u16) -> Option<usize> {
    match class {
        10 => Some(0),
        20 => Some(1),
        30 => Some(2),
        40 => Some(3),
        50 => Some(4),
        60 => Some(5),
        85 => Some(6),
        90 => Some(7),
        _ => None,
    }
}

/// No method at this place of [`INDEX`].
const ABSENT: u8 = u8::MAX;
/// Method ids are below this in every class.
const METHOD_IDS: usize = 128;

/// [`METHODS`]' position of each (class, method id), built at compile time:
/// `lookup` runs for every method frame a client sends, so it is two array
/// reads rather than a search.
static INDEX: [[u8; METHOD_IDS]; 8] = {
    let mut index = [[ABSENT; METHOD_IDS]; 8];
    let mut i = 0;
    while i < TABLE.len() {
        let slot = match class_slot(TABLE[i].class) {
            Some(slot) => slot,
            None => panic!("a class without a slot"),
        };
        index[slot][TABLE[i].method as usize] = i as u8;
        i += 1;
    }
    index
};

/// The method with these ids, if the protocol has one.
#[inline]
pub fn lookup(class: u16, method: u16) -> Option<&'static MethodSpec> {
    let slot = class_slot(class)?;
    match *INDEX[slot].get(usize::from(method))? {
        ABSENT => None,
        i => Some(&METHODS[usize::from(i)]),
    }
}

/// Why method arguments do not decode, in the three ways RabbitMQ tells
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// An argument runs past the end of the bytes (RabbitMQ: 501 "cannot
    /// decode").
    Truncated,
    /// Bytes left over after the last argument (501 "cannot decode").
    Trailing,
    /// A short string argument of a method without content that is not
    /// UTF-8 (501 "Malformed UTF-8 in shortstr").
    Utf8,
    /// A field table that fits its length but does not parse (RabbitMQ's
    /// reader crashes on it and drops the connection without a word).
    Table(BadTable),
}

/// Why a field table's contents do not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTable {
    /// A key or value runs past the end of its table or array.
    Truncated,
    /// A value of a type RabbitMQ's parser does not know.
    UnknownType(u8),
    /// A float that is NaN or infinite (Erlang cannot hold one).
    NotFinite,
    /// Tables or arrays nested deeper than any client needs.
    TooDeep,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Truncated => f.write_str("truncated arguments"),
            Malformed::Trailing => f.write_str("bytes after the last argument"),
            Malformed::Utf8 => f.write_str("a short string that is not UTF-8"),
            Malformed::Table(BadTable::Truncated) => f.write_str("a field table cut short"),
            Malformed::Table(BadTable::UnknownType(t)) => {
                write!(f, "a field table value of unknown type {t:#04x}")
            }
            Malformed::Table(BadTable::NotFinite) => {
                f.write_str("a field table float that is not finite")
            }
            Malformed::Table(BadTable::TooDeep) => f.write_str("field tables nested too deeply"),
        }
    }
}

/// How deeply tables and arrays may nest. Real clients nest two levels; the
/// bound keeps a hostile table from exhausting the stack.
pub const MAX_NESTING: u8 = 16;

/// A cursor over argument bytes that checks, and keeps nothing.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn long_str(&mut self) -> Option<&'a [u8]> {
        let b = self.take(4)?;
        self.take(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn short_str(&mut self) -> Option<&'a [u8]> {
        let n = self.take(1)?[0] as usize;
        self.take(n)
    }

    /// One argument; `utf8`: short strings must be UTF-8.
    fn field(&mut self, field: Field, utf8: bool) -> Result<(), Malformed> {
        let whole = match field {
            Octet | Bit => self.take(1).is_some(),
            Short => self.take(2).is_some(),
            Long => self.take(4).is_some(),
            LongLong | Timestamp => self.take(8).is_some(),
            ShortStr => match self.short_str() {
                Some(s) if utf8 && !is_utf8(s) => return Err(Malformed::Utf8),
                Some(_) => true,
                None => false,
            },
            LongStr => self.long_str().is_some(),
            Table => match self.long_str() {
                Some(table) => return check_table(table, 0).map_err(Malformed::Table),
                None => false,
            },
        };
        if whole {
            Ok(())
        } else {
            Err(Malformed::Truncated)
        }
    }
}

/// Checks the arguments of a method against its spec, in field order as
/// RabbitMQ decodes them: every field present and well formed, nothing
/// after the last. Bits that share an octet take one octet (unused bits are
/// ignored, as RabbitMQ does). Short strings of methods without content
/// must be UTF-8 (RabbitMQ does not check a publish's exchange and key).
pub fn check_arguments(spec: &MethodSpec, args: &[u8]) -> Result<(), Malformed> {
    let mut cursor = Cursor { rest: args };
    let mut bits_in_octet = 0u8;
    for &field in spec.fields {
        if field == Bit {
            if bits_in_octet == 0 {
                cursor.field(Bit, false)?;
            }
            bits_in_octet = (bits_in_octet + 1) % 8;
            continue;
        }
        bits_in_octet = 0;
        cursor.field(field, !spec.content)?;
    }
    if cursor.rest.is_empty() {
        Ok(())
    } else {
        Err(Malformed::Trailing)
    }
}

/// UTF-8 as RabbitMQ checks it (Erlang's xmerl): each sequence well formed
/// and not overlong; surrogates and four-byte sequences past U+10FFFF pass.
fn is_utf8(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some((&lead, tail)) = rest.split_first() {
        let (extra, floor, mut code) = match lead {
            0x00..=0x7F => (0, 0, u32::from(lead)),
            0xC0..=0xDF => (1, 0x80, u32::from(lead & 0x1F)),
            0xE0..=0xEF => (2, 0x800, u32::from(lead & 0x0F)),
            0xF0..=0xF7 => (3, 0x1_0000, u32::from(lead & 0x07)),
            _ => return false,
        };
        if tail.len() < extra {
            return false;
        }
        for &b in &tail[..extra] {
            if b & 0xC0 != 0x80 {
                return false;
            }
            code = code << 6 | u32::from(b & 0x3F);
        }
        if code < floor {
            return false;
        }
        rest = &tail[extra..];
    }
    true
}

/// Checks a field table's entries (the bytes after its length): each a
/// short string key and a typed value of a type RabbitMQ parses.
fn check_table(entries: &[u8], depth: u8) -> Result<(), BadTable> {
    if depth >= MAX_NESTING {
        return Err(BadTable::TooDeep);
    }
    let mut cursor = Cursor { rest: entries };
    while !cursor.rest.is_empty() {
        cursor.short_str().ok_or(BadTable::Truncated)?;
        check_value(&mut cursor, depth)?;
    }
    Ok(())
}

/// Checks one typed value. The types are those RabbitMQ's table parser
/// knows; anything else makes it fail the whole frame.
fn check_value(cursor: &mut Cursor<'_>, depth: u8) -> Result<(), BadTable> {
    let kind = cursor.take(1).ok_or(BadTable::Truncated)?[0];
    let size = match kind {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' => 4,
        b'D' => 5,
        b'l' | b'L' | b'T' => 8,
        b'f' => {
            let b = cursor.take(4).ok_or(BadTable::Truncated)?;
            let value = f32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            return value.is_finite().then_some(()).ok_or(BadTable::NotFinite);
        }
        b'd' => {
            let b = cursor.take(8).ok_or(BadTable::Truncated)?;
            let value = f64::from_be_bytes(b.try_into().expect("8 bytes"));
            return value.is_finite().then_some(()).ok_or(BadTable::NotFinite);
        }
        b'S' | b'x' => return cursor.long_str().map(drop).ok_or(BadTable::Truncated),
        b'F' => return check_table(cursor.long_str().ok_or(BadTable::Truncated)?, depth + 1),
        b'A' => {
            if depth + 1 >= MAX_NESTING {
                return Err(BadTable::TooDeep);
            }
            let mut items = Cursor {
                rest: cursor.long_str().ok_or(BadTable::Truncated)?,
            };
            while !items.rest.is_empty() {
                check_value(&mut items, depth + 1)?;
            }
            return Ok(());
        }
        other => return Err(BadTable::UnknownType(other)),
    };
    cursor.take(size).map(drop).ok_or(BadTable::Truncated)
}

/// The class whose content header carries these properties.
pub const BASIC_CLASS: u16 = 60;

/// Basic's content properties in flag order (flag bit 15 first): the types
/// of content-type, content-encoding, headers, delivery-mode, priority,
/// correlation-id, reply-to, expiration, message-id, timestamp, type,
/// user-id, app-id and cluster-id.
const BASIC_PROPERTIES: [Field; 14] = [
    ShortStr, ShortStr, Table, Octet, Octet, ShortStr, ShortStr, ShortStr, ShortStr, Timestamp,
    ShortStr, ShortStr, ShortStr, ShortStr,
];

/// What a content header says, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentHeader {
    pub class: u16,
    pub weight: u16,
    pub body_size: u64,
}

/// Why a content header is not one the broker accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHeader {
    /// Shorter than class, weight and body size (RabbitMQ's reader: 501).
    Short,
    /// Properties that do not decode: flags and list disagree, or a bad
    /// headers table (RabbitMQ's channel crashes on them: 541).
    Properties,
}

/// The shortest content header payload: class, weight and body size.
pub const CONTENT_HEADER_MIN: usize = 12;

/// Reads and checks a content header frame's payload: its fixed part, and
/// for class basic a property list that matches its flags exactly. Like
/// RabbitMQ, it reads one flag word and ignores its two lowest bits (the
/// continuation flag among them): basic has fourteen properties. Class and
/// weight are returned for the caller to judge against the method.
pub fn check_content_header(payload: &[u8]) -> Result<ContentHeader, BadHeader> {
    let mut cursor = Cursor { rest: payload };
    let fixed = cursor.take(CONTENT_HEADER_MIN).ok_or(BadHeader::Short)?;
    let header = ContentHeader {
        class: u16::from_be_bytes([fixed[0], fixed[1]]),
        weight: u16::from_be_bytes([fixed[2], fixed[3]]),
        body_size: u64::from_be_bytes(fixed[4..12].try_into().expect("8 bytes")),
    };
    if header.class != BASIC_CLASS {
        return Ok(header);
    }
    let flags = cursor.take(2).ok_or(BadHeader::Properties)?;
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    for (i, field) in BASIC_PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - i)) != 0 {
            cursor
                .field(*field, false)
                .map_err(|_| BadHeader::Properties)?;
        }
    }
    if cursor.rest.is_empty() {
        Ok(header)
    } else {
        Err(BadHeader::Properties)
    }
}

#[cfg(test)]
mod tests;
