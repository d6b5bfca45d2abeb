//! Container networking end to end (`--network`, passt, virtio-net):
//! real microVMs with busybox. Restores are expensive on PVM hosts
//! (PLATFORM.md), so each container serves several checks.
//!
//! `outbound_fetch_from_a_package_registry` needs this machine to reach
//! deb.debian.org; it checks that first and fails with a clear message
//! (never hangs) when the host itself cannot.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    assert_one_line_error, host_fetch, hull, import_busybox, passt_children, require_kvm,
    run_limited, text, wait_gone, REGISTRY_HOST, REGISTRY_PATH,
};

/// Longest a hull command may take here before the test fails (the first
/// one of a root prepares the image and may make snapshots: minutes on a
/// loaded PVM host).
const COMMAND_LIMIT: Duration = Duration::from_secs(1200);
/// Longest the registry fetch may take once the image is ready.
const FETCH_LIMIT: Duration = Duration::from_secs(300);

fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let out = hull(root).args(["inspect", name]).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    v[0].clone()
}

#[test]
fn bad_network_values_are_one_line_and_create_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    let out = hull(root)
        .args(["run", "--network", "host", "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "cannot share the host's network stack");
    let out = hull(root)
        .args(["run", "--network", "nosuchnet", "busybox:test", "true"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "network nosuchnet not found");
    let out = hull(root).args(["ps", "-a", "-q"]).output().unwrap();
    assert_eq!(ok(&out), "", "no container was created");
}

/// Default network: eth0 with the address inspect shows, a resolv.conf
/// naming passt's forwarder, one passt per VM that goes when the
/// container stops and when its VMM is killed; `--network none`: only lo.
#[test]
fn default_network_has_eth0_and_none_has_only_lo() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);

    let mut run = hull(root);
    run.args([
        "run",
        "-d",
        "--name",
        "net1",
        "busybox:test",
        "sleep",
        "100000",
    ]);
    ok(&run_limited(run, COMMAND_LIMIT));
    let v = inspect(root, "net1");
    let ns = &v["NetworkSettings"];
    assert_eq!(ns["NetworkMode"], "default");
    assert_eq!(ns["IPAddress"], "10.0.2.15");
    assert_eq!(ns["IPPrefixLen"], 24);
    assert_eq!(ns["Gateway"], "10.0.2.2");
    let id = v["Id"].as_str().unwrap();
    let mac = ns["MacAddress"].as_str().unwrap().to_string();
    assert_eq!(
        mac,
        format!(
            "02:{}:{}:{}:{}:{}",
            &id[0..2],
            &id[2..4],
            &id[4..6],
            &id[6..8],
            &id[8..10]
        )
    );

    let mut exec = hull(root);
    exec.args([
        "exec",
        "net1",
        "sh",
        "-c",
        "cat /proc/net/dev; echo ---; ip addr show eth0; echo ---; ip route; echo ---; cat /etc/resolv.conf",
    ]);
    let out = ok(&run_limited(exec, COMMAND_LIMIT));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert!(
        parts[0].contains("eth0:") && parts[0].contains("lo:"),
        "{out}"
    );
    assert!(parts[1].contains("inet 10.0.2.15/24"), "{out}");
    assert!(parts[1].contains(&format!("link/ether {mac}")), "{out}");
    assert!(parts[1].contains("UP"), "{out}");
    assert!(parts[2].contains("default via 10.0.2.2 dev eth0"), "{out}");
    assert_eq!(parts[3], "nameserver 10.0.2.3\n");

    // The gateway is not the host: a service bound to the host's loopback
    // stays out of reach (passt runs with --no-map-gw).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut exec = hull(root);
    exec.args(["exec", "net1", "sh", "-c"])
        .arg(format!("echo hi | nc -w 3 10.0.2.2 {port}; echo rc=$?"));
    let out = ok(&run_limited(exec, COMMAND_LIMIT));
    // nc's own status says little (it times out either way); what counts
    // is that no connection reached the host's listener (with passt's
    // default mapping one does).
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the host loopback listener got a connection from the container (nc said: {out})"
    );

    // One passt, the VMM's child; it goes (reaped) when the container stops.
    let vmm = v["VM"]["VmmPid"].as_i64().expect("VMM pid") as i32;
    let passt = passt_children(vmm);
    assert_eq!(passt.len(), 1, "passt children of VMM {vmm}: {passt:?}");
    let mut stop = hull(root);
    stop.args(["stop", "-t", "1", "net1"]);
    ok(&run_limited(stop, COMMAND_LIMIT));
    wait_gone(passt[0], "passt of a stopped container");
    assert_eq!(inspect(root, "net1")["NetworkSettings"]["IPAddress"], "");

    // kill -9 of the VMM: passt must not outlive it.
    let mut start = hull(root);
    start.args(["start", "net1"]);
    ok(&run_limited(start, COMMAND_LIMIT));
    let vmm = inspect(root, "net1")["VM"]["VmmPid"]
        .as_i64()
        .expect("VMM pid") as i32;
    let passt = passt_children(vmm);
    assert_eq!(passt.len(), 1, "passt children of VMM {vmm}: {passt:?}");
    // SAFETY: killing the VMM process this test started.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    wait_gone(vmm, "VMM");
    wait_gone(passt[0], "passt of a VMM killed with -9");
    ok(&hull(root).args(["rm", "-f", "net1"]).output().unwrap());

    // --network none: loopback only, and no passt at all.
    let mut run = hull(root);
    run.args([
        "run",
        "--rm",
        "--network",
        "none",
        "busybox:test",
        "sh",
        "-c",
        "cat /proc/net/dev; cat /etc/resolv.conf",
    ]);
    let out = ok(&run_limited(run, COMMAND_LIMIT));
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(i, _)| i.trim()))
        .filter(|i| !i.contains(' '))
        .collect();
    assert_eq!(ifaces.first(), Some(&"lo"), "{out}");
    assert!(!out.contains("eth0"), "{out}");
}

/// Needs outbound access (deb.debian.org): a container on the default
/// network resolves the registry through passt's DNS forwarder and
/// fetches the same bytes the host gets.
#[test]
fn outbound_fetch_from_a_package_registry() {
    require_kvm();
    let expected = host_fetch();
    assert!(expected.starts_with(b"Origin: Debian"), "unexpected file");
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    // Image preparation and snapshots first, so the fetch's own time limit
    // measures the network.
    let mut warm = hull(root);
    warm.args(["run", "--rm", "busybox:test", "true"]);
    ok(&run_limited(warm, COMMAND_LIMIT));
    let url = format!("http://{REGISTRY_HOST}{REGISTRY_PATH}");
    let mut run = hull(root);
    run.args([
        "run",
        "--rm",
        "busybox:test",
        "sh",
        "-c",
        &format!("nslookup {REGISTRY_HOST} >/dev/null && echo resolved && wget -q -O - {url} | head -c 4096"),
    ]);
    let out = ok(&run_limited(run, FETCH_LIMIT));
    let body = out
        .strip_prefix("resolved\n")
        .unwrap_or_else(|| panic!("name not resolved in the container: {out:?}"));
    assert_eq!(body.len(), 4096.min(expected.len()));
    assert_eq!(body.as_bytes(), &expected[..body.len()]);
}
