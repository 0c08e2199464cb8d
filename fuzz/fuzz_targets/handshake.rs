//! Any bytes as a client's side of the handshake: warren's server
//! handshake (protocol header, Start-Ok with SASL PLAIN or AMQPLAIN and
//! field tables, Tune-Ok, Connection.Open) ends in a result or a refusal,
//! never a panic or a hang.
#![no_main]

mod runtime;

use libfuzzer_sys::fuzz_target;
use warren::client::handshake;
use warren::client::server_properties::ClientStart;
use warren::protocol::frame::FrameReader;
use warren::protocol::method::Tune;
use warren::net::{ReadHalf, WriteHalf};

fuzz_target!(|data: &[u8]| {
    runtime::block_on(async {
        let input: ReadHalf = Box::pin(std::io::Cursor::new(data.to_vec()));
        let mut writer: WriteHalf = Box::pin(tokio::io::sink());
        let mut reader = FrameReader::new(input, 131072);
        let start = ClientStart::default().frame(None);
        if handshake::greet(&mut reader, &mut writer, &start).await.is_err() {
            return;
        }
        let offer = Tune {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        };
        let _ = handshake::tune_and_open(&mut reader, &mut writer, offer).await;
    });
});
