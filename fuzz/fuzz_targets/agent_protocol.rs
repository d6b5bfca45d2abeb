//! Fuzzes the host<->agent wire format from either side: a stream of
//! length-prefixed JSON messages decoded as requests (what the agent
//! reads), responses and unpack replies (what the host reads) and unpack
//! requests; the `ATTACH`/forward header lines; the serial status lines.
//! Nothing may panic, and whatever decodes must encode and decode back to
//! itself.

#![no_main]

use std::fmt::Debug;

use agent_protocol::protocol::{
    self, Request, Response, StdioKind, UnpackReply, UnpackRequest, MAX_MESSAGE,
};
use agent_protocol::Status;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes messages from `data` until the stream ends or fails; checks
/// that each one survives a round trip through the wire format.
fn messages<T: Serialize + DeserializeOwned + PartialEq + Debug>(mut data: &[u8]) {
    while let Ok(msg) = protocol::recv::<T>(&mut data) {
        let mut wire = Vec::new();
        protocol::send(&mut wire, &msg).expect("a decoded message does not encode");
        assert!(wire.len() <= MAX_MESSAGE as usize + 4);
        let back: T = protocol::recv(&mut &wire[..]).expect("an encoded message does not decode");
        assert_eq!(back, msg);
    }
}

fuzz_target!(|data: &[u8]| {
    messages::<Request>(data);
    messages::<Response>(data);
    messages::<UnpackRequest>(data);
    // Its `seconds` is a float: decoded, not compared.
    let mut rest = data;
    while protocol::recv::<UnpackReply>(&mut rest).is_ok() {}

    let mut lines = data;
    while let Some(line) = protocol::read_line(&mut lines) {
        assert!(line.len() < 128 && !line.contains('\n'));
        if let Some(port) = protocol::parse_forward_header(&line) {
            assert_ne!(port, 0);
            let header = protocol::forward_header(port);
            assert_eq!(
                protocol::parse_forward_header(header.trim_end()),
                Some(port)
            );
        }
        let mut words = line.split(' ');
        if let (Some("ATTACH"), Some(_), Some(kind)) = (words.next(), words.next(), words.next()) {
            if let Some(k) = StdioKind::from_word(kind) {
                assert_eq!(k.word(), kind);
            }
        }
        let _ = protocol::compatible(protocol::VERSION, &line);
    }

    let text = String::from_utf8_lossy(data);
    for line in text.split_inclusive('\n') {
        if let Some(status) = Status::parse(line) {
            // Lines the agent writes parse back to what it meant (the
            // uptime is written with two decimals).
            if !matches!(status, Status::Ready { .. }) {
                let again = Status::parse(&status.to_line());
                if let Status::Error(msg) = &status {
                    if msg.ends_with(['\r', '\n']) {
                        continue;
                    }
                }
                assert_eq!(again, Some(status));
            }
        }
    }
});
