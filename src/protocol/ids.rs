//! The name of every AMQP 0-9-1 method (RabbitMQ's extensions included),
//! so that code matches methods by name and never by bare numbers.
//!
//! A method is identified on the wire by its class id and method id; the
//! grammar for each is in [`super::spec`].

/// `(class id, method id)` as they open a method frame's payload.
pub type MethodId = (u16, u16);

pub const CONNECTION_START: MethodId = (10, 10);
pub const CONNECTION_START_OK: MethodId = (10, 11);
pub const CONNECTION_SECURE: MethodId = (10, 20);
pub const CONNECTION_SECURE_OK: MethodId = (10, 21);
pub const CONNECTION_TUNE: MethodId = (10, 30);
pub const CONNECTION_TUNE_OK: MethodId = (10, 31);
pub const CONNECTION_OPEN: MethodId = (10, 40);
pub const CONNECTION_OPEN_OK: MethodId = (10, 41);
pub const CONNECTION_CLOSE: MethodId = (10, 50);
pub const CONNECTION_CLOSE_OK: MethodId = (10, 51);
pub const CONNECTION_BLOCKED: MethodId = (10, 60);
pub const CONNECTION_UNBLOCKED: MethodId = (10, 61);
pub const CONNECTION_UPDATE_SECRET: MethodId = (10, 70);
pub const CONNECTION_UPDATE_SECRET_OK: MethodId = (10, 71);

pub const CHANNEL_OPEN: MethodId = (20, 10);
pub const CHANNEL_OPEN_OK: MethodId = (20, 11);
pub const CHANNEL_FLOW: MethodId = (20, 20);
pub const CHANNEL_FLOW_OK: MethodId = (20, 21);
pub const CHANNEL_CLOSE: MethodId = (20, 40);
pub const CHANNEL_CLOSE_OK: MethodId = (20, 41);

pub const ACCESS_REQUEST: MethodId = (30, 10);
pub const ACCESS_REQUEST_OK: MethodId = (30, 11);

pub const EXCHANGE_DECLARE: MethodId = (40, 10);
pub const EXCHANGE_DECLARE_OK: MethodId = (40, 11);
pub const EXCHANGE_DELETE: MethodId = (40, 20);
pub const EXCHANGE_DELETE_OK: MethodId = (40, 21);
pub const EXCHANGE_BIND: MethodId = (40, 30);
pub const EXCHANGE_BIND_OK: MethodId = (40, 31);
pub const EXCHANGE_UNBIND: MethodId = (40, 40);
pub const EXCHANGE_UNBIND_OK: MethodId = (40, 51);

pub const QUEUE_DECLARE: MethodId = (50, 10);
pub const QUEUE_DECLARE_OK: MethodId = (50, 11);
pub const QUEUE_BIND: MethodId = (50, 20);
pub const QUEUE_BIND_OK: MethodId = (50, 21);
pub const QUEUE_PURGE: MethodId = (50, 30);
pub const QUEUE_PURGE_OK: MethodId = (50, 31);
pub const QUEUE_DELETE: MethodId = (50, 40);
pub const QUEUE_DELETE_OK: MethodId = (50, 41);
pub const QUEUE_UNBIND: MethodId = (50, 50);
pub const QUEUE_UNBIND_OK: MethodId = (50, 51);

pub const BASIC_QOS: MethodId = (60, 10);
pub const BASIC_QOS_OK: MethodId = (60, 11);
pub const BASIC_CONSUME: MethodId = (60, 20);
pub const BASIC_CONSUME_OK: MethodId = (60, 21);
pub const BASIC_CANCEL: MethodId = (60, 30);
pub const BASIC_CANCEL_OK: MethodId = (60, 31);
pub const BASIC_PUBLISH: MethodId = (60, 40);
pub const BASIC_RETURN: MethodId = (60, 50);
pub const BASIC_DELIVER: MethodId = (60, 60);
pub const BASIC_GET: MethodId = (60, 70);
pub const BASIC_GET_OK: MethodId = (60, 71);
pub const BASIC_GET_EMPTY: MethodId = (60, 72);
pub const BASIC_ACK: MethodId = (60, 80);
pub const BASIC_REJECT: MethodId = (60, 90);
pub const BASIC_RECOVER_ASYNC: MethodId = (60, 100);
pub const BASIC_RECOVER: MethodId = (60, 110);
pub const BASIC_RECOVER_OK: MethodId = (60, 111);
pub const BASIC_NACK: MethodId = (60, 120);

pub const CONFIRM_SELECT: MethodId = (85, 10);
pub const CONFIRM_SELECT_OK: MethodId = (85, 11);

pub const TX_SELECT: MethodId = (90, 10);
pub const TX_SELECT_OK: MethodId = (90, 11);
pub const TX_COMMIT: MethodId = (90, 20);
pub const TX_COMMIT_OK: MethodId = (90, 21);
pub const TX_ROLLBACK: MethodId = (90, 30);
pub const TX_ROLLBACK_OK: MethodId = (90, 31);
