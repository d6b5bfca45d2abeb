//! `containerd-shim-hull-v2`: containerd's runtime v2 shim for hull
//! (runtime `io.containerd.hull.v2`). One shim process per container; each
//! task runs in its own microVM through the `hull` CLI next to this binary
//! (see docs/kubernetes.md for the design).

mod hull_cli;
mod process;
mod rootfs;
mod service;
mod stdio;

use containerd_shim::Config;

fn main() {
    let config = Config {
        // The shim waits for its `hull` children itself (std's Child::wait);
        // the library's reaper would take their exit statuses first.
        no_reaper: true,
        // Detached helpers of hull (none with attached runs) belong to init,
        // not to us: nothing here would reap them.
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<service::HullShim>("io.containerd.hull.v2", Some(config));
}
