//! User networks end to end (`hull network`, `run --network NAME`,
//! `--network-alias`): real microVMs with busybox on bridges in network
//! namespaces hull makes. Restores are expensive on PVM hosts
//! (PLATFORM.md), so one server container and three short clients carry
//! all the checks. Traffic stays inside those namespaces, except in
//! `a_container_on_a_user_network_reaches_its_peers_and_the_outside`,
//! which needs this machine to reach deb.debian.org: it checks that
//! first and fails with a clear message (never hangs) when the host
//! itself cannot.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    assert_one_line_error, host_fetch, hull, import_busybox, passt_children, require_kvm,
    run_limited, text, wait_gone, REGISTRY_HOST, REGISTRY_PATH,
};

/// Longest a hull command may take (the first of a root prepares the
/// image and may make snapshots: minutes on a loaded PVM host).
const COMMAND_LIMIT: Duration = Duration::from_secs(1200);

fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn hull_ok(root: &Path, args: &[&str]) -> String {
    let mut cmd = hull(root);
    cmd.args(args);
    ok(&run_limited(cmd, COMMAND_LIMIT))
}

fn json(root: &Path, args: &[&str]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&hull_ok(root, args)).unwrap();
    v[0].clone()
}

/// Runs `script` in a `--rm` busybox container on `network`; its stdout.
fn client(root: &Path, network: &str, script: &str) -> String {
    hull_ok(
        root,
        &[
            "run",
            "--rm",
            "--network",
            network,
            "busybox:test",
            "sh",
            "-c",
            script,
        ],
    )
}

/// Whether a process named `comm` runs with `needle` in its command line.
fn process_running(comm: &str, needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let c = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let state = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        c.trim() == comm
            && String::from_utf8_lossy(&cmdline).contains(needle)
            && !state.contains(") Z")
    })
}

/// Mistakes are one line, exit non-zero and change nothing: a duplicate
/// name, an overlapping subnet, a bad subnet, a built-in name, an
/// unknown network for run and rm, `--network host`, an alias without a
/// user network; connect and disconnect of a stopped container.
#[test]
fn network_mistakes_are_one_line_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    hull_ok(
        root,
        &["network", "create", "--subnet", "10.97.0.0/16", "wide"],
    );
    let before = hull_ok(root, &["network", "ls"]);
    let fails = |args: &[&str], needle: &str| {
        let out = hull(root).args(args).output().unwrap();
        assert_one_line_error(&out, needle);
    };
    fails(&["network", "create", "wide"], "already exists");
    fails(
        &["network", "create", "--subnet", "10.97.8.0/24", "narrow"],
        "overlaps network wide",
    );
    fails(
        &["network", "create", "--subnet", "10.98.0.1/24", "x"],
        "host bits are set",
    );
    // A container on a user network has the default network's subnet on
    // its outbound interface.
    fails(
        &["network", "create", "--subnet", "10.0.0.0/16", "x"],
        "overlaps network default (10.0.2.0/24)",
    );
    fails(
        &["network", "create", "--subnet", "nonsense", "x"],
        "invalid subnet",
    );
    fails(&["network", "create", "none"], "built-in network");
    fails(
        &["network", "rm", "nosuchnet"],
        "network nosuchnet not found",
    );
    fails(
        &["network", "connect", "wide", "nosuchcontainer"],
        "nosuchcontainer",
    );
    fails(
        &["run", "--network", "nosuchnet", "busybox:test", "true"],
        "network nosuchnet not found",
    );
    fails(
        &["run", "--network", "host", "busybox:test", "true"],
        "cannot share the host's network stack",
    );
    fails(
        &["run", "--network-alias", "a", "busybox:test", "true"],
        "only supported on user networks",
    );
    assert_eq!(hull_ok(root, &["network", "ls"]), before);
    assert_eq!(hull_ok(root, &["ps", "-a", "-q"]), "", "no container made");
    // connect/disconnect change a stopped container's network for its
    // next start; while it is configured there the network stays.
    hull_ok(
        root,
        &[
            "create",
            "--name",
            "c1",
            "--network",
            "none",
            "busybox:test",
            "true",
        ],
    );
    hull_ok(
        root,
        &["network", "connect", "--alias", "one", "wide", "c1"],
    );
    let ns = &json(root, &["inspect", "c1"])["NetworkSettings"];
    assert_eq!(ns["NetworkMode"], "wide");
    fails(
        &["network", "connect", "wide", "c1"],
        "already on network wide",
    );
    fails(&["network", "rm", "wide"], "in use by container(s) c1");
    fails(&["network", "disconnect", "wide", "c2"], "c2");
    hull_ok(root, &["network", "disconnect", "wide", "c1"]);
    assert_eq!(
        json(root, &["inspect", "c1"])["NetworkSettings"]["NetworkMode"],
        "none"
    );
    fails(
        &["network", "disconnect", "wide", "c1"],
        "not connected to network wide",
    );
    hull_ok(root, &["rm", "c1"]);
    // Listed, inspected, removed with its namespace and DNS responder.
    let net = json(root, &["network", "inspect", "wide"]);
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.97.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.97.0.1");
    let dns_dir = root.join("networks/wide/dns");
    let needle = dns_dir.to_string_lossy().to_string();
    assert!(process_running("aardvark-dns", &needle));
    // Its relay to the host's resolver (a hull process of its own).
    let ns = root.join("networks/wide/netns");
    let ns = ns.to_string_lossy().to_string();
    assert!(process_running("hull", &ns), "no DNS relay runs");
    assert_eq!(
        hull_ok(root, &["network", "prune", "-f"]),
        "Deleted Networks:\nwide\n"
    );
    assert!(!root.join("networks/wide").exists());
    assert!(!process_running("aardvark-dns", &needle));
    assert!(!process_running("hull", &ns), "relay stopped");
}

/// Two containers on one network reach each other by IP, name and alias;
/// a container on another network can neither resolve nor reach them; a
/// network in use cannot be removed; after `rm` the name is gone.
#[test]
fn containers_on_a_network_reach_each_other_by_name_and_only_there() {
    require_kvm();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    hull_ok(root, &["network", "create", "front"]);
    hull_ok(
        root,
        &["network", "create", "--subnet", "10.91.0.0/24", "back"],
    );

    hull_ok(
        root,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "front",
            "--network-alias",
            "site",
            "busybox:test",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let v = json(root, &["inspect", "web"]);
    let ns = &v["NetworkSettings"];
    assert_eq!(ns["NetworkMode"], "front");
    let ip = ns["IPAddress"].as_str().unwrap().to_string();
    assert_eq!(ip, "10.89.0.2", "the first address after the gateway");
    assert_eq!(ns["Gateway"], "10.89.0.1");
    assert_eq!(ns["Networks"]["front"]["IPAddress"], ip.as_str());
    assert_eq!(ns["Networks"]["front"]["Aliases"][0], "site");
    let id = v["Id"].as_str().unwrap();
    assert_eq!(
        ns["MacAddress"].as_str().unwrap(),
        format!(
            "02:{}:{}:{}:{}:{}",
            &id[0..2],
            &id[2..4],
            &id[4..6],
            &id[6..8],
            &id[8..10]
        )
    );
    let net = json(root, &["network", "inspect", "front"]);
    assert_eq!(net["Containers"][id]["Name"], "web");

    let short = &id[..12];
    // Same network: by IP, container name, alias and short ID; the client's own
    // address is the next one, its resolver the gateway.
    let out = client(
        root,
        "front",
        &format!(
            "for h in {ip} web site {short}; do timeout 20 wget -q -O - http://$h/ || echo failed $h; done; \
             ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; cat /etc/resolv.conf; \
             ping -c 1 -W 3 -I eth0 {ip} >/dev/null 2>&1 && echo reached || echo unreached"
        ),
    );
    // The ping through eth0 here is the control for the other network's
    // "unreached" below.
    assert_eq!(
        out,
        "hello-from-web\nhello-from-web\nhello-from-web\nhello-from-web\ninet 10.89.0.3/24\nnameserver 10.89.0.1\nreached\n"
    );

    // Another network: the name does not resolve, and the address is not
    // reached through that network's interface (eth0, the other bridge).
    // Only eth0 is tried: the default route (eth1, passt) would carry the
    // attempt out of the machine, where tests send nothing.
    let out = client(
        root,
        "back",
        &format!(
            "nslookup web >/dev/null 2>&1 && echo resolved || echo unresolved; \
             ping -c 1 -W 3 -I eth0 {ip} >/dev/null 2>&1 && echo reached || echo unreached"
        ),
    );
    assert_eq!(out, "unresolved\nunreached\n");

    // A running VM's interface is fixed: connect is refused.
    let out = hull(root)
        .args(["network", "connect", "back", "web"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "container web is running");

    // In use: refused, naming the container; nothing changes.
    let out = hull(root)
        .args(["network", "rm", "front"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "in use by container(s) web");
    assert!(hull_ok(root, &["network", "ls"]).contains("front"));

    // Removed: its name and alias stop resolving, its address is free.
    hull_ok(root, &["rm", "-f", "web"]);
    let out = client(
        root,
        "front",
        &format!(
            "for h in web site {short}; do nslookup $h >/dev/null 2>&1 && echo resolved $h || echo unresolved $h; done; \
             ip -4 addr show eth0 | grep -o 'inet [0-9./]*'"
        ),
    );
    assert_eq!(
        out,
        format!("unresolved web\nunresolved site\nunresolved {short}\ninet 10.89.0.2/24\n")
    );
    let net = json(root, &["network", "inspect", "front"]);
    assert_eq!(net["Containers"], serde_json::json!({}));

    hull_ok(root, &["network", "rm", "front", "back"]);
    assert!(!root.join("networks/front").exists() && !root.join("networks/back").exists());
}

/// Needs outbound access (deb.debian.org): a container on a user network
/// still reaches another by name through the network's bridge and DNS,
/// and reaches the outside through its second interface (its own passt,
/// which holds the default route): outside names are answered by the
/// network's responder too (through its relay to the host's resolver),
/// and the fetched bytes are the host's.
#[test]
fn a_container_on_a_user_network_reaches_its_peers_and_the_outside() {
    require_kvm();
    let expected = host_fetch();
    assert!(expected.starts_with(b"Origin: Debian"), "unexpected file");
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    import_busybox(root);
    hull_ok(
        root,
        &["network", "create", "--subnet", "10.92.0.0/24", "out"],
    );
    hull_ok(
        root,
        &[
            "run",
            "-d",
            "--name",
            "peer",
            "--network",
            "out",
            "busybox:test",
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-peer > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    let url = format!("http://{REGISTRY_HOST}{REGISTRY_PATH}");
    let out = client(
        root,
        "out",
        &format!(
            "timeout 30 wget -q -O - http://peer/ || echo failed peer; \
             ip route | awk '/^default/ {{print $3, $5}}'; \
             ip -4 addr show eth1 | grep -o 'inet [0-9./]*'; \
             timeout 60 nslookup {REGISTRY_HOST} | awk '/^Server:/ {{print \"server\", $2}}'; \
             a=$(cut -d' ' -f1 /proc/uptime); \
             timeout 120 wget -q -O - {url} | head -c 4096 > /tmp/release; \
             b=$(cut -d' ' -f1 /proc/uptime); \
             cat /tmp/release; echo; echo took $a $b"
        ),
    );
    let (head, rest) = out
        .split_once("inet 10.0.2.15/24\nserver 10.92.0.1\n")
        .unwrap_or_else(|| panic!("no eth1 with passt's address, or another resolver: {out:?}"));
    assert_eq!(
        head, "hello-from-peer\n10.0.2.2 eth1\n",
        "peer by name, default route through passt's interface"
    );
    let (body, took) = rest.rsplit_once("\ntook ").expect("timing line");
    assert_eq!(
        body.len(),
        4096.min(expected.len()),
        "the registry file from inside: {body:?}"
    );
    assert_eq!(body.as_bytes(), &expected[..body.len()]);
    let times: Vec<f64> = took
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    eprintln!(
        "outbound fetch of 4 KiB from a user network: {:.1} s of guest time",
        times[1] - times[0]
    );
    // The peer's outbound passt is its VMM's child, and does not outlive
    // a VMM killed with -9.
    let vmm = json(root, &["inspect", "peer"])["VM"]["VmmPid"]
        .as_i64()
        .expect("VMM pid") as i32;
    let passt = passt_children(vmm);
    assert_eq!(passt.len(), 1, "passt children of VMM {vmm}: {passt:?}");
    // SAFETY: killing the VMM process this test started.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    wait_gone(vmm, "VMM");
    wait_gone(passt[0], "passt of a VMM killed with -9");
    hull_ok(root, &["rm", "-f", "peer"]);
    hull_ok(root, &["network", "rm", "out"]);
}
