//! Serves [`UNPACK_PORT`](agent::protocol::UNPACK_PORT): builds an image's
//! root filesystem (EROFS) from its layer blobs. The blobs and the output
//! are memory windows (host files mapped as guest-physical memory), so the
//! guest kernel copies none of the bytes: decompression, tar parsing and
//! the filesystem writer all run in this process at native speed.

use std::os::unix::net::UnixStream;

use agent::protocol::{self, LayerWindow, UnpackReply, UnpackRequest};
use agent::unpack::{ImageBuilder, ImageOptions};
use agent::window::{ChunkedWindow, Window};

/// Handles one unpack request.
pub fn serve(mut conn: UnixStream) {
    let reply = match protocol::recv::<UnpackRequest>(&mut conn) {
        Ok(req) => build_image(&req).unwrap_or_else(|message| UnpackReply::Error { message }),
        Err(e) => UnpackReply::Error {
            message: e.to_string(),
        },
    };
    let _ = protocol::send(&mut conn, &reply);
}

fn build_image(req: &UnpackRequest) -> Result<UnpackReply, String> {
    let start = std::time::Instant::now();
    // The output is mapped as the builder reaches it: the window is sized
    // for the worst case and every mapped page costs the guest kernel.
    let output = ChunkedWindow::new(req.output.guest_addr, req.output.len).map_err(describe)?;
    let mut builder = ImageBuilder::new(
        output,
        ImageOptions {
            // ~130 bytes of tree each: at most ~130 MiB of the helper's 256.
            max_entries: 1 << 20,
            ..ImageOptions::default()
        },
    )
    .map_err(describe)?;
    for (i, layer) in req.layers.iter().enumerate() {
        let blob = map_layer(layer).map_err(|e| format!("layer {}: {e}", i + 1))?;
        builder
            .apply_layer(&blob.bytes()[..layer.size as usize])
            .map_err(|e| format!("layer {}: {}", i + 1, describe(e)))?;
        // Unmapping would cost as much as mapping did.
        blob.keep_mapped();
    }
    let (image_bytes, stats) = builder.finish().map_err(describe)?;
    Ok(UnpackReply::Done {
        compressed_bytes: stats.compressed_bytes,
        tar_bytes: stats.tar_bytes,
        entries: stats.entries(),
        whiteouts: stats.whiteouts + stats.opaque_dirs,
        image_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Maps a layer's window read-only, after checking the blob fits in it.
fn map_layer(layer: &LayerWindow) -> Result<Window, String> {
    if layer.size > layer.window.len {
        return Err(format!(
            "blob of {} bytes in a window of {}",
            layer.size, layer.window.len
        ));
    }
    Window::map(layer.window.guest_addr, layer.window.len, false).map_err(describe)
}

/// An error with its causes, on one line.
fn describe(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
