//! Serves [`UNPACK_PORT`](agent::protocol::UNPACK_PORT): the host streams an
//! image's layer blobs and the agent applies them onto a directory (the
//! mounted, empty root-filesystem disk of a helper VM).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;

use agent::protocol::{self, UnpackReply, UnpackRequest};
use agent::unpack::{Options, Unpacker};

/// Handles one unpack stream.
pub fn serve(mut conn: UnixStream) {
    let reply = match protocol::recv::<UnpackRequest>(&mut conn) {
        Ok(req) => unpack(&mut conn, &req),
        Err(e) => UnpackReply::Error {
            message: e.to_string(),
        },
    };
    let _ = protocol::send(&mut conn, &reply);
}

fn unpack(conn: &mut UnixStream, req: &UnpackRequest) -> UnpackReply {
    let start = std::time::Instant::now();
    let mut unpacker = match Unpacker::new(Path::new(&req.target), Options::default()) {
        Ok(u) => u,
        Err(e) => {
            return UnpackReply::Error {
                message: e.to_string(),
            }
        }
    };
    for (i, size) in req.sizes.iter().enumerate() {
        let mut layer = (&mut *conn).take(*size);
        if let Err(e) = unpacker.apply_layer(&mut layer) {
            return UnpackReply::Error {
                message: format!("layer {}: {e}", i + 1),
            };
        }
        // A layer may end (tar end-of-archive) before its blob does;
        // skip the rest so the next layer starts at its first byte.
        if let Err(e) = std::io::copy(&mut layer, &mut std::io::sink()) {
            return UnpackReply::Error {
                message: format!("layer {}: {e}", i + 1),
            };
        }
    }
    // SAFETY: sync has no preconditions; the host detaches the disk next.
    unsafe { libc::sync() };
    let s = unpacker.stats();
    UnpackReply::Done {
        compressed_bytes: s.compressed_bytes,
        tar_bytes: s.tar_bytes,
        entries: s.entries(),
        whiteouts: s.whiteouts + s.opaque_dirs,
        seconds: start.elapsed().as_secs_f64(),
    }
}
