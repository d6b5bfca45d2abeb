//! Throughput of the layer unpacker against host `tar -x`, same run, same
//! archive, same filesystem.
//!
//! `cargo run --release -p agent --example unpack_bench [-- DIR [FILES [MB]]]`
//!
//! `... --example unpack_bench -- --unpack TARGET BLOB...` just applies the
//! blobs (handy under `strace -c` to count system calls per entry);
//! `-- --image OUT BLOB...` builds an EROFS image of them into the file OUT.
//!
//! Generates a layer of FILES files (default 2000) totalling MB megabytes
//! (default 50) in DIR (default: a temp dir under /tmp), then unpacks it
//! (plain and gzip) with `agent::unpack` and with GNU tar, 3 times each,
//! and prints the medians and the ratio; then the median time of building
//! an EROFS image of it into a memory window (`agent::unpack::ImageBuilder`). Needs root for ownership (as the
//! guest agent is); otherwise both sides keep the caller's ownership.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::unpack::{ImageBuilder, ImageOptions, Options, Unpacker};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A tar of `files` files in 40 directories, `total` bytes of content:
/// mostly small files with a few large ones, half text-like (compressible),
/// half random.
fn make_layer(files: usize, total: u64) -> (Vec<u8>, u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Heavy-tailed sizes, then scaled to the total.
    let raw: Vec<u64> = (0..files)
        .map(|i| {
            let r = rng.next() % 1000;
            let base = if r < 900 {
                1 + rng.next() % 16_384
            } else {
                1 + rng.next() % 400_000
            };
            if i % 250 == 0 {
                base * 20
            } else {
                base
            }
        })
        .collect();
    let sum: u64 = raw.iter().sum();
    let sizes: Vec<u64> = raw.iter().map(|s| s * total / sum).collect();
    let mut b = tar::Builder::new(Vec::with_capacity(total as usize + files * 1024));
    for d in 0..40 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("usr/lib/pkg{d:02}/"), &[][..])
            .unwrap();
    }
    let words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\n";
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let mut data = Vec::with_capacity(size as usize);
        if i % 2 == 0 {
            while (data.len() as u64) < size {
                data.extend_from_slice(&rng.next().to_le_bytes());
            }
        } else {
            while (data.len() as u64) < size {
                data.extend_from_slice(words);
            }
        }
        data.truncate(size as usize);
        bytes += size;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if i % 7 == 0 { 0o755 } else { 0o644 });
        h.set_size(size);
        h.set_mtime(1_700_000_000 + i as u64);
        let path = format!("usr/lib/pkg{:02}/file-{i:05}.so", i % 40);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    (b.into_inner().unwrap(), bytes)
}

fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(work: &Path, label: &str, mut run: impl FnMut(&Path)) -> Duration {
    let mut times = Vec::new();
    for i in 0..3 {
        let dst = work.join(format!("{label}-{i}"));
        fs::create_dir(&dst).unwrap();
        sync();
        let t = Instant::now();
        run(&dst);
        times.push(t.elapsed());
        fs::remove_dir_all(&dst).unwrap();
    }
    median(times)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--unpack") {
        let mut u = Unpacker::new(Path::new(&args[1]), Options::default()).unwrap();
        for blob in &args[2..] {
            let s = u.apply_layer(fs::File::open(blob).unwrap()).unwrap();
            println!("{blob}: {s}");
        }
        return;
    }
    if args.first().map(String::as_str) == Some("--image") {
        let out = fs::File::create(&args[1]).unwrap();
        let mut b = ImageBuilder::new(out, ImageOptions::default()).unwrap();
        for blob in &args[2..] {
            let s = b.apply_layer(fs::File::open(blob).unwrap()).unwrap();
            println!("{blob}: {s}");
        }
        let (len, s) = b.finish().unwrap();
        println!(
            "{}: {len} bytes, tree peak {} KiB, {} bytes of unreferenced data; {s}",
            args[1],
            s.tree_bytes >> 10,
            s.unreferenced_bytes
        );
        return;
    }
    let tmp;
    let work: PathBuf = match args.first() {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let files: usize = args.get(1).map_or(2000, |s| s.parse().unwrap());
    let mb: u64 = args.get(2).map_or(50, |s| s.parse().unwrap());
    fs::create_dir_all(&work).unwrap();
    let (layer, content) = make_layer(files, mb * 1_000_000);
    let plain = work.join("layer.tar");
    fs::write(&plain, &layer).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    let gzp = work.join("layer.tar.gz");
    fs::write(&gzp, &gz).unwrap();
    let entries = files + 40;
    println!(
        "layer: {files} files + 40 dirs, {:.1} MB content, {:.1} MB tar, {:.1} MB gzip; work dir {}",
        content as f64 / 1e6,
        layer.len() as f64 / 1e6,
        gz.len() as f64 / 1e6,
        work.display()
    );
    for (label, blob, flag) in [("plain", &plain, "-xf"), ("gzip", &gzp, "-xzf")] {
        let ours = time_runs(&work, &format!("hull-{label}"), |dst| {
            let mut u = Unpacker::new(dst, Options::default()).unwrap();
            let s = u.apply_layer(fs::File::open(blob).unwrap()).unwrap();
            assert_eq!(s.files as usize, files);
        });
        let theirs = time_runs(&work, &format!("tar-{label}"), |dst| {
            let st = Command::new("tar")
                .arg(flag)
                .arg(blob)
                .arg("-C")
                .arg(dst)
                .status()
                .unwrap();
            assert!(st.success());
        });
        let rate = |d: Duration| {
            (
                layer.len() as f64 / 1e6 / d.as_secs_f64(),
                entries as f64 / d.as_secs_f64(),
            )
        };
        let (om, of) = rate(ours);
        let (tm, tf) = rate(theirs);
        println!(
            "{label:5}: hull unpack {:7.3} s {om:7.1} MB/s {of:8.0} entries/s | tar {flag} {:7.3} s {tm:7.1} MB/s {tf:8.0} entries/s | hull/tar speed ratio {:.2}",
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    image_runs(&layer, &gz, files);
}

/// Median time of building an EROFS image of the layer (plain, gzip)
/// into a memory window, as the helper VM's agent does.
fn image_runs(plain: &[u8], gz: &[u8], files: usize) {
    let mut window = vec![0u8; plain.len() * 2 + (64 << 20)];
    for (label, blob) in [("plain", plain), ("gzip", gz)] {
        let mut times = Vec::new();
        let mut len = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let mut b = ImageBuilder::new(&mut window[..], ImageOptions::default()).unwrap();
            let s = b.apply_layer(blob).unwrap();
            assert_eq!(s.files as usize, files);
            len = b.finish().unwrap().0;
            times.push(t.elapsed());
        }
        let d = median(times);
        println!(
            "{label:5}: hull EROFS image {:7.3} s {:7.1} MB/s, image {:.1} MB",
            d.as_secs_f64(),
            plain.len() as f64 / 1e6 / d.as_secs_f64(),
            len as f64 / 1e6
        );
    }
}
