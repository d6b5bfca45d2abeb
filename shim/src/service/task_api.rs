//! The ttrpc Task service: each request mapped onto the task, its
//! processes and the `hull` CLI.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;

use super::*;

impl shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if self.inner.task().is_some() {
            return Err(ttrpc_error(
                shim::protos::ttrpc::Code::ALREADY_EXISTS,
                "this shim already has a task",
            ));
        }
        let pid = self.create_task(&req)?;
        self.inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            self.run_init()?
        } else {
            self.run_exec(&req.exec_id)?
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        let proc = task.process(&req.exec_id)?;
        let (status, pid, exit) = proc.snapshot();
        Ok(api::StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.to_string_lossy().into_owned(),
            pid,
            status: status_of(status).into(),
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map_or(MessageField::none(), |e| {
                MessageField::some(timestamp(e.at))
            }),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Not under the task's lock: waiting takes as long as the process.
        let proc = {
            let guard = self.inner.task();
            let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
            task.process(&req.exec_id)?
        };
        let exit = proc.wait();
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        if req.exec_id.is_empty() {
            Self::kill_init(task, req.signal)?;
        } else {
            let proc = task.process(&req.exec_id)?;
            Self::kill_exec(task, &proc, req.signal)?;
        }
        Ok(api::Empty::default())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut guard = self.inner.task();
        let task = guard.as_mut().ok_or_else(|| not_found("task"))?;
        let proc = task.process(&req.exec_id)?;
        let (status, pid, exit) = proc.snapshot();
        if status == Status::Running {
            return Err(ttrpc_error(
                shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                "cannot delete a running process",
            ));
        }
        let exit = exit.unwrap_or(Exit {
            code: 0,
            at: SystemTime::now(),
        });
        if req.exec_id.is_empty() {
            proc.abandon();
            Self::release(task);
            self.inner.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: task.id.clone(),
                    pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(timestamp(exit.at)),
                    ..Default::default()
                }),
            );
            *guard = None;
        } else {
            task.execs.remove(&req.exec_id);
            task.exec_specs.remove(&req.exec_id);
            let _ = std::fs::remove_file(exec_pid_file(&task.bundle, &req.exec_id));
        }
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, _req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        // The host processes that stand for the task's processes (their
        // guest PIDs live in another kernel).
        let processes = std::iter::once(&task.init)
            .chain(task.execs.values())
            .filter_map(|p| match p.snapshot() {
                (Status::Running, pid, _) => Some(ProcessInfo {
                    pid,
                    ..Default::default()
                }),
                _ => None,
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let mut guard = self.inner.task();
        let task = guard.as_mut().ok_or_else(|| not_found("task"))?;
        if task.execs.contains_key(&req.exec_id) {
            return Err(ttrpc_error(
                shim::protos::ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(spec).map_err(|e| internal(format!("exec spec: {e}")))?;
        let stdio = StdioPaths {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        let proc = Process::new(&req.exec_id, stdio);
        task.execs.insert(req.exec_id.clone(), proc);
        task.exec_specs.insert(req.exec_id.clone(), process);
        let container_id = task.id.clone();
        drop(guard);
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        let proc = task.process(&req.exec_id)?;
        proc.resize(req.width, req.height)
            .map_err(|e| internal(chain(&e)))?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        if req.stdin {
            task.process(&req.exec_id)?.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let guard = self.inner.task();
        let task = guard.as_ref().ok_or_else(|| not_found("task"))?;
        let (_, pid, _) = task.init.snapshot();
        let metrics = vm_metrics(pid).map_err(internal)?;
        let value = metrics.write_to_bytes().map_err(internal)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .task()
            .as_ref()
            .map_or(0, |t| t.init.snapshot().1);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // containerd asks once the task is deleted; a task still here
        // keeps the shim (its VM must not be orphaned).
        if self.inner.task().is_none() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

/// The VM's host cost as cgroup v1 metrics: the resident memory and CPU
/// time of the `hull run` process, which holds the VMM and its guest RAM.
fn vm_metrics(pid: u32) -> std::io::Result<Metrics> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns = |t: u64| t * 1_000_000_000 / hz;
    let (user, kernel) = (ns(ticks(11)), ns(ticks(12)));
    Ok(Metrics {
        memory: MessageField::some(MemoryStat {
            rss: rss_kib * 1024,
            usage: MessageField::some(MemoryEntry {
                usage: rss_kib * 1024,
                ..Default::default()
            }),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: user + kernel,
                user,
                kernel,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}
