//! The runtime-spec `config.json` of a container-mode container, built
//! with oci-spec's types: Docker's defaults (namespaces, mounts, masked
//! paths, capabilities, a seccomp allow list: [`super::seccomp`]) with
//! the container's process, a user namespace where the host allows one
//! ([`super::userns`]), a network namespace hull made, and limits only
//! as far as the host allows.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use agent::unpack::IdShift;

use super::user::Ids;
use super::OciError;
use crate::container::ContainerConfig;

/// Docker's default capability set (moby's `oci/caps/defaults.go` list).
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What the spec needs besides the container's configuration.
pub struct BundleInput<'a> {
    /// The container's configuration.
    pub config: &'a ContainerConfig,
    /// The merged root (overlay) on the host.
    pub rootfs: &'a Path,
    /// The process's user, resolved in the image.
    pub ids: Ids,
    /// The network namespace to join.
    pub netns: &'a Path,
    /// Files bind-mounted over /etc/hosts, /etc/hostname, /etc/resolv.conf.
    pub etc_files: Vec<(PathBuf, &'static str)>,
    /// Apply `-m`/`--cpus` through cgroups (the host allows it).
    pub limits: bool,
    /// The container's user namespace (`None`: host IDs): its mapping,
    /// and where hull bound it (it owns the network namespace).
    pub userns: Option<IdShift>,
    pub userns_file: Option<&'a Path>,
}

fn err(e: oci_spec::OciSpecError) -> OciError {
    OciError::Spec(e)
}

/// The spec for `input`.
pub fn spec(input: &BundleInput<'_>) -> Result<Spec, OciError> {
    let c = input.config;
    let process = ProcessBuilder::default()
        .terminal(c.tty)
        .args(c.argv.clone())
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .user(
            UserBuilder::default()
                .uid(input.ids.uid)
                .gid(input.ids.gid)
                .additional_gids(input.ids.additional.clone())
                .build()
                .map_err(err)?,
        )
        .capabilities(capabilities()?)
        .rlimits(vec![nofile_limit()?])
        .no_new_privileges(false)
        .build()
        .map_err(err)?;
    let root = RootBuilder::default()
        .path(input.rootfs)
        .readonly(c.read_only)
        .build()
        .map_err(err)?;
    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(root)
        .hostname(c.hostname.clone())
        .mounts(mounts(input)?)
        .linux(linux(input)?)
        .build()
        .map_err(err)
}

/// Docker's default set, bounding, effective and permitted (the kernel
/// clears the last two at exec for a non-root user, as under Docker).
pub fn capabilities() -> Result<oci_spec::runtime::LinuxCapabilities, OciError> {
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPS.into_iter().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(err)
}

/// Open files: the host's hard limit for both values, as Docker passes
/// its daemon's on. Never above the hard limit: without CAP_SYS_RESOURCE
/// the runtime could not raise it, and the start would fail.
fn nofile_limit() -> Result<oci_spec::runtime::PosixRlimit, OciError> {
    // SAFETY: getrlimit fills the struct we pass.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with a valid resource and pointer.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    };
    let hard = hard.min(1 << 20);
    PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(hard)
        .soft(hard)
        .build()
        .map_err(err)
}

/// oci-spec's defaults (Docker's: /proc, /dev, /dev/pts, /dev/shm,
/// /dev/mqueue, /sys read-only, cgroup read-only), the container's own
/// /etc files and its bind mounts.
fn mounts(input: &BundleInput<'_>) -> Result<Vec<Mount>, OciError> {
    let mut m = oci_spec::runtime::get_default_mounts();
    for (src, dst) in &input.etc_files {
        m.push(bind(src, dst, &["rbind", "rprivate"])?);
    }
    // `-v /host/dir:/path`: the host directory itself, as Docker binds
    // it (with a user namespace, host owners outside its range show as
    // the overflow ID, as under Docker's userns-remap).
    for b in &input.config.binds {
        let ro: &[&str] = if b.read_only { &["ro"] } else { &[] };
        let options = [&["rbind", "rprivate"][..], ro].concat();
        m.push(bind(&b.source, &b.target, &options)?);
    }
    Ok(m)
}

fn bind(src: &Path, dst: &str, options: &[&str]) -> Result<Mount, OciError> {
    MountBuilder::default()
        .destination(dst)
        .typ("bind")
        .source(src)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(err)
}

/// A user namespace's mappings: container IDs from 0, UIDs then GIDs.
type IdMappings = (LinuxIdMapping, LinuxIdMapping);

/// The mappings of `shift` (`None`: host IDs, no user namespace).
fn id_mappings(shift: Option<IdShift>) -> Result<Option<IdMappings>, OciError> {
    let Some(s) = shift else {
        return Ok(None);
    };
    let map = |host_id: u32| {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host_id)
            .size(s.size)
            .build()
            .map_err(err)
    };
    Ok(Some((map(s.uid)?, map(s.gid)?)))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, OciError> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p),
        None => b,
    }
    .build()
    .map_err(err)
}

fn linux(input: &BundleInput<'_>) -> Result<oci_spec::runtime::Linux, OciError> {
    let c = input.config;
    let mappings = id_mappings(input.userns)?;
    let mut namespaces = Vec::new();
    if mappings.is_some() {
        namespaces.push(namespace(LinuxNamespaceType::User, input.userns_file)?);
    }
    namespaces.extend([
        namespace(LinuxNamespaceType::Pid, None)?,
        namespace(LinuxNamespaceType::Ipc, None)?,
        namespace(LinuxNamespaceType::Uts, None)?,
        namespace(LinuxNamespaceType::Mount, None)?,
        namespace(LinuxNamespaceType::Cgroup, None)?,
        namespace(LinuxNamespaceType::Network, Some(input.netns))?,
    ]);
    // Every device denied but those the runtime adds itself (null, zero,
    // full, random, urandom, tty, the pty master): an image's device nodes
    // open nothing.
    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(err)?]);
    if input.limits {
        let bytes = i64::try_from(c.mem_mib << 20).unwrap_or(i64::MAX);
        resources = resources
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .build()
                    .map_err(err)?,
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .period(100_000u64)
                    .quota(i64::from(c.cpus) * 100_000)
                    .build()
                    .map_err(err)?,
            );
    }
    let defaults = oci_spec::runtime::Linux::default();
    let mut builder = LinuxBuilder::default().namespaces(namespaces);
    if let Some((uids, gids)) = mappings {
        builder = builder.uid_mappings(vec![uids]).gid_mappings(vec![gids]);
    }
    builder
        .resources(resources.build().map_err(err)?)
        .seccomp(super::seccomp::filter()?)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        serde_json::from_value(serde_json::json!({
            "id": "a".repeat(64), "name": "n", "image": "i", "image_id": "x",
            "layers": [], "argv": ["/bin/sh", "-c", "true"], "env": ["A=1"],
            "cwd": "/data", "user": "app", "hostname": "h", "mem_mib": 64,
            "cpus": 2, "auto_remove": true, "read_only": false,
            "interactive": false, "created": "now"
        }))
        .unwrap()
    }

    #[test]
    fn spec_has_the_process_namespaces_and_docker_caps() {
        let mut c = config();
        c.binds = vec![crate::volume::bind::BindMount {
            source: "/srv/app".into(),
            target: "/app".into(),
            read_only: true,
        }];
        let input = BundleInput {
            config: &c,
            rootfs: Path::new("/r"),
            ids: Ids {
                uid: 1000,
                gid: 1000,
                additional: vec![10],
            },
            netns: Path::new("/n"),
            etc_files: vec![(PathBuf::from("/h"), "/etc/hosts")],
            limits: true,
            userns: Some(IdShift {
                uid: 100_000,
                gid: 200_000,
                size: 65_536,
            }),
            userns_file: Some(Path::new("/u")),
        };
        let v = serde_json::to_value(spec(&input).unwrap()).unwrap();
        assert_eq!(v["process"]["args"][2], "true");
        assert_eq!(v["process"]["cwd"], "/data");
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["additionalGids"][0], 10);
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), 14);
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/n");
        assert!(ns.iter().any(|n| n["type"] == "user" && n["path"] == "/u"));
        assert_eq!(
            v["linux"]["uidMappings"],
            serde_json::json!([{"containerID": 0, "hostID": 100_000, "size": 65_536}])
        );
        assert_eq!(v["linux"]["gidMappings"][0]["hostID"], 200_000);
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys");
        assert_eq!(sys.unwrap()["type"], "sysfs");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 200_000);
        let rl = &v["process"]["rlimits"][0];
        assert!(rl["hard"].as_u64().unwrap() >= rl["soft"].as_u64().unwrap());
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hosts" && m["source"] == "/h"));
        let app = v["mounts"].as_array().unwrap().last().unwrap();
        assert_eq!(
            (&app["source"], &app["destination"], &app["options"]),
            (
                &serde_json::json!("/srv/app"),
                &serde_json::json!("/app"),
                &serde_json::json!(["rbind", "rprivate", "ro"])
            )
        );
    }
}
