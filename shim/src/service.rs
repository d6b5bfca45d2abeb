//! containerd's Task service over hull: the shim lifecycle (start,
//! delete) and the task's requests, one task (container) per shim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim as shim;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use oci_spec::runtime::Spec;
use shim::api;
use shim::publisher::RemotePublisher;
use shim::{DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};

use crate::hull_cli;
use crate::process::{Exit, Process, Status};
use crate::rootfs::{self, ImageDisk, RootMount};
use crate::stdio::StdioPaths;

/// The shim: the namespace and container it serves.
pub struct HullShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
}

/// The task service handed to the ttrpc server.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Mutex<RemotePublisher>,
    task: Mutex<Option<Task>>,
}

/// The container: its bundle, hull name, image disk and processes.
struct Task {
    id: String,
    bundle: PathBuf,
    name: String,
    spec: Spec,
    disk: ImageDisk,
    mounted: bool,
    init: Arc<Process>,
    execs: HashMap<String, Arc<Process>>,
    /// Exec requests' OCI processes until their Start.
    exec_specs: HashMap<String, oci_spec::runtime::Process>,
}

impl shim::Shim for HullShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut shim::Config) -> Self {
        HullShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        // One shim per container: grouped by its own ID.
        let grouping = opts.id.clone();
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        // The serving shim reads it back to remove its socket at exit.
        shim::synchronous::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's cleanup after a shim died: the container's VM and
    /// state go, the rootfs is unmounted (the working directory is the
    /// bundle).
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        if let Ok(hull) = hull_cli::hull_binary() {
            let name = hull_cli::container_name(&self.namespace, &self.id);
            let _ = hull_cli::remove(&hull, &name);
        }
        if let Ok(bundle) = std::env::current_dir() {
            rootfs::unmount(&bundle.join("rootfs"));
            let _ = std::fs::remove_file(bundle.join("rootfs.erofs"));
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace: self.namespace.clone(),
                exit: self.exit.clone(),
                publisher: Mutex::new(publisher),
                task: Mutex::new(None),
            }),
        }
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

fn status_of(s: Status) -> TaskStatus {
    match s {
        Status::Created => TaskStatus::CREATED,
        Status::Running => TaskStatus::RUNNING,
        Status::Stopped => TaskStatus::STOPPED,
    }
}

fn ttrpc_error(code: shim::protos::ttrpc::Code, msg: impl ToString) -> shim::protos::ttrpc::Error {
    shim::protos::ttrpc::Error::RpcStatus(shim::protos::ttrpc::get_status(code, msg))
}

fn internal(e: impl std::fmt::Display) -> shim::protos::ttrpc::Error {
    // The whole chain: containerd shows this one line to the user.
    ttrpc_error(shim::protos::ttrpc::Code::INTERNAL, e)
}

fn not_found(what: &str) -> shim::protos::ttrpc::Error {
    ttrpc_error(
        shim::protos::ttrpc::Code::NOT_FOUND,
        format!("{what} not found"),
    )
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = shim::Context::default();
        if let Err(e) = publisher.publish(ctx, topic, &self.namespace, event) {
            log::warn!("publishing {topic}: {e}");
        }
    }

    fn task(&self) -> MutexGuard<'_, Option<Task>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Task {
    fn process(&self, exec_id: &str) -> TtrpcResult<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(&format!("exec {exec_id}")))
    }
}

/// Where `hull exec --pid-file` puts exec `exec_id`'s agent process id.
fn exec_pid_file(bundle: &Path, exec_id: &str) -> PathBuf {
    let clean: String = exec_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    bundle.join(format!("exec-{clean}.pid"))
}

/// The Create request's rootfs mounts as [`RootMount`]s.
fn root_mounts(req: &api::CreateTaskRequest) -> Vec<RootMount> {
    req.rootfs
        .iter()
        .map(|m| RootMount {
            kind: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// The hull root the shim's containers live in (hull's own rule:
/// HULL_ROOT, else /var/lib/hull), for the shared image disks.
fn hull_root() -> PathBuf {
    std::env::var_os("HULL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/hull"))
}

impl TaskService {
    fn create_task(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(internal)?;
        let cache = hull_root().join("containerd").join("disks");
        let (disk, mounted) = rootfs::image_disk(&root_mounts(req), &bundle, &cache)
            .map_err(|e| internal(chain(&e)))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let task = Task {
            id: req.id.clone(),
            name: hull_cli::container_name(&self.inner.namespace, &req.id),
            bundle,
            spec,
            disk,
            mounted,
            init: Process::new("", stdio),
            execs: HashMap::new(),
            exec_specs: HashMap::new(),
        };
        *self.inner.task() = Some(task);
        // No host process yet: the VM starts with Start; our PID stands in.
        Ok(std::process::id())
    }

    /// Start of the task: its VM runs and its process started in it (as
    /// runc's start returns once the process runs, so that an exec or a
    /// kill right after finds it); the task's lock is not held meanwhile.
    fn run_init(&self) -> TtrpcResult<u32> {
        let (pid, name, init) = {
            let guard = self.inner.task();
            let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
            let pid = self.start_init(task)?;
            (pid, task.name.clone(), task.init.clone())
        };
        let gone = || init.snapshot().0 == Status::Stopped;
        hull_cli::wait_main_started(&hull_root(), &name, gone);
        let container_id = self.inner.task().as_ref().map(|t| t.id.clone());
        let container_id = container_id.ok_or_else(|| not_found("task"))?;
        self.inner.publish(
            topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id,
                pid,
                ..Default::default()
            }),
        );
        Ok(pid)
    }

    /// Start of exec `exec_id` (its `hull exec`).
    fn run_exec(&self, exec_id: &str) -> TtrpcResult<u32> {
        let mut guard = self.inner.task();
        let task = guard.as_mut().ok_or_else(|| not_found("task"))?;
        let proc = task.process(exec_id)?;
        let spec = task
            .exec_specs
            .remove(exec_id)
            .ok_or_else(|| not_found(&format!("exec {exec_id}")))?;
        let pid = self.start_exec(task, &proc, &spec)?;
        let container_id = task.id.clone();
        drop(guard);
        self.inner.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id,
                exec_id: exec_id.into(),
                pid,
                ..Default::default()
            }),
        );
        Ok(pid)
    }

    fn start_init(&self, task: &Task) -> TtrpcResult<u32> {
        let hull = hull_cli::hull_binary().map_err(internal)?;
        let stdio = hull_cli::StdioFlags {
            stdin: !task.init.stdio.stdin.is_empty(),
            terminal: task.init.stdio.terminal,
        };
        let vm = hull_cli::vm_options(&task.spec);
        let cmd = hull_cli::run_command(&hull, &task.name, &task.disk.path, &task.spec, &vm, stdio);
        let inner = self.inner.clone();
        let id = task.id.clone();
        let on_exit = move |pid, exit: Exit| {
            inner.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id,
                    pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                }),
            );
        };
        task.init
            .start(cmd, on_exit)
            .map_err(|e| internal(chain(&e)))
    }

    fn start_exec(
        &self,
        task: &Task,
        proc: &Arc<Process>,
        spec: &oci_spec::runtime::Process,
    ) -> TtrpcResult<u32> {
        let hull = hull_cli::hull_binary().map_err(internal)?;
        let stdio = hull_cli::StdioFlags {
            stdin: !proc.stdio.stdin.is_empty(),
            terminal: proc.stdio.terminal,
        };
        let pid_file = exec_pid_file(&task.bundle, &proc.exec_id);
        let cmd = hull_cli::exec_command(&hull, &task.name, spec, stdio, &pid_file);
        let inner = self.inner.clone();
        let (id, exec_id) = (task.id.clone(), proc.exec_id.clone());
        let on_exit = move |pid, exit: Exit| {
            inner.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id,
                    id: exec_id,
                    pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                }),
            );
        };
        proc.start(cmd, on_exit).map_err(|e| internal(chain(&e)))
    }

    /// Releases what Create took: the hull container (if `--rm` did not
    /// already), the rootfs mount, a private image disk.
    fn release(task: &Task) {
        if let Ok(hull) = hull_cli::hull_binary() {
            // Usually gone already (`run --rm`): an error here is expected.
            let _ = hull_cli::remove(&hull, &task.name);
        }
        if task.mounted {
            rootfs::unmount(&task.bundle.join("rootfs"));
        }
        if task.disk.private {
            let _ = std::fs::remove_file(&task.disk.path);
        }
    }

    /// Kill of an exec: through the agent to its process in the VM once
    /// hull wrote its id; before that, to its `hull exec` (which forwards
    /// INT, TERM, HUP and QUIT, and dies of the rest).
    fn kill_exec(task: &Task, proc: &Process, signal: u32) -> TtrpcResult<()> {
        let pid_file = exec_pid_file(&task.bundle, &proc.exec_id);
        let agent_id = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let (Some(id), Status::Running) = (agent_id, proc.snapshot().0) {
            let hull = hull_cli::hull_binary().map_err(internal)?;
            if hull_cli::kill_process(&hull, &task.name, id, signal).is_ok() {
                return Ok(());
            }
        }
        proc.signal_host(signal).map_err(internal)
    }

    fn kill_init(task: &Task, signal: u32) -> TtrpcResult<()> {
        let (status, _, _) = task.init.snapshot();
        match status {
            Status::Stopped => return Err(not_found("process (already exited)")),
            Status::Created => {
                // Never started: nothing runs; it simply ends.
                task.init.abandon();
                return Ok(());
            }
            Status::Running => {}
        }
        let hull = hull_cli::hull_binary().map_err(internal)?;
        match hull_cli::kill(&hull, &task.name, signal) {
            Ok(()) => Ok(()),
            // Before the VM's process runs (or hull refused): our hull
            // child gets the signal itself.
            Err(e) => task
                .init
                .signal_host(signal)
                .map_err(|_| internal(chain(&e))),
        }
    }
}

mod task_api;
