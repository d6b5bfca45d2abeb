//! A sampling profiler of the guest: where a vCPU's time goes, by guest
//! instruction address, without anything in the guest.
//!
//! On PVM hosts every guest-kernel instruction is emulated, so the guest
//! kernel's own code is what a slow start or a slow transfer is made of;
//! `perf` on the host sees only the emulator. This samples the guest's RIP
//! instead: a timer thread kicks the vCPU thread out of `KVM_RUN` with the
//! kick signal every interval, KVM copies the registers into the shared
//! `kvm_run` page on that exit (`KVM_CAP_SYNC_REGS`, no extra ioctl, so the
//! vCPU's seccomp list is unchanged), and the vCPU thread records the time
//! and RIP. `bench/guest_profile.py` turns the files into a table by kernel
//! symbol. A debugging tool: off unless `HULL_GUEST_PROFILE` is set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{SyncReg, VcpuFd};
use vmm_sys_util::signal::Killable;

/// Samples kept per vCPU at most: an hour at the default interval.
const MAX_SAMPLES: usize = 3_600_000;

/// Errors of the profiler (it only ever warns: a profile is never worth
/// failing a VM for).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The timer thread could not be started.
    #[error("cannot start the guest profiler's timer thread")]
    Timer(#[source] std::io::Error),
    /// The samples could not be written.
    #[error(
        "cannot write the guest profile {0} (a jailed VMM has nowhere to write: HULL_JAIL=off)"
    )]
    Write(PathBuf, #[source] std::io::Error),
}

/// What `HULL_GUEST_PROFILE` / `HULL_GUEST_PROFILE_US` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    /// Files are `<prefix>.<vmm pid>.vcpu<id>`.
    pub prefix: PathBuf,
    /// Time between two samples.
    pub interval: Duration,
}

impl ProfileConfig {
    /// From the environment: `HULL_GUEST_PROFILE=PREFIX` turns it on,
    /// `HULL_GUEST_PROFILE_US` sets the interval (default 1000 µs, at
    /// least 100 µs so the kicks cannot starve the guest).
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// As [`Self::from_env`], with the variables looked up by `var`.
    fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<Self> {
        let prefix = var("HULL_GUEST_PROFILE")?;
        let interval_us = var("HULL_GUEST_PROFILE_US")
            .and_then(|v| v.to_str()?.parse::<u64>().ok())
            .unwrap_or(1000)
            .max(100);
        Some(Self {
            prefix: PathBuf::from(prefix),
            interval: Duration::from_micros(interval_us),
        })
    }
}

/// One vCPU's profile in progress.
pub struct Profiler {
    path: PathBuf,
    start: Instant,
    samples: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    timer: Option<JoinHandle<Result<(), ProfileError>>>,
}

impl Profiler {
    /// Starts sampling the calling thread (the vCPU thread). Must run
    /// before the thread's seccomp filter is installed: the timer thread is
    /// spawned from it and must not inherit the filter.
    pub fn start(
        config: &ProfileConfig,
        id: u8,
        vcpu: &mut VcpuFd,
        kick: libc::c_int,
    ) -> Result<Self, ProfileError> {
        vcpu.set_sync_valid_reg(SyncReg::Register);
        let mut name = config.prefix.clone().into_os_string();
        name.push(format!(".{}.vcpu{id}", std::process::id()));
        let path = PathBuf::from(name);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target = ThisThread::current();
        let (interval, timer_samples, timer_stop) =
            (config.interval, samples.clone(), stop.clone());
        let timer_path = path.clone();
        // The timer thread also writes the file: the vCPU thread's seccomp
        // filter does not let it open one.
        let timer = std::thread::Builder::new()
            .name(format!("profile{id}"))
            .spawn(move || {
                while !timer_stop.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    let _ = target.kill(kick);
                }
                let samples = timer_samples.lock().unwrap_or_else(|p| p.into_inner());
                write_samples(&timer_path, &samples)
                    .map_err(|e| ProfileError::Write(timer_path.clone(), e))
            })
            .map_err(ProfileError::Timer)?;
        Ok(Self {
            path,
            start: Instant::now(),
            samples,
            stop,
            timer: Some(timer),
        })
    }

    /// Records where the guest was when `KVM_RUN` last returned.
    pub fn sample(&mut self, vcpu: &VcpuFd) {
        let at = self.start.elapsed().as_micros() as u64;
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < MAX_SAMPLES {
            samples.push((at, vcpu.sync_regs().regs.rip));
        }
    }

    /// Stops the timer, which writes the samples, and says where.
    pub fn finish(mut self) -> Result<PathBuf, ProfileError> {
        self.stop.store(true, Ordering::Release);
        match self.timer.take().map(JoinHandle::join) {
            Some(Ok(written)) => written.map(|()| self.path),
            _ => Err(ProfileError::Write(
                self.path,
                std::io::Error::other("the profiler's thread panicked"),
            )),
        }
    }
}

/// `microseconds rip` lines, one per sample.
fn write_samples(path: &Path, samples: &[(u64, u64)]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (at, rip) in samples {
        writeln!(out, "{at} {rip:#x}")?;
    }
    out.flush()
}

/// The calling thread, as something the timer thread can signal.
#[derive(Clone, Copy)]
struct ThisThread(libc::pthread_t);

impl ThisThread {
    fn current() -> Self {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        Self(unsafe { libc::pthread_self() })
    }
}

// SAFETY: a pthread_t is a plain handle; signalling it from another thread
// is what pthread_kill is for. The vCPU thread outlives the timer thread
// (`finish` joins the timer before the vCPU thread returns).
unsafe impl Killable for ThisThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_prefix_and_bounds_interval() {
        fn vars(
            prefix: Option<&'static str>,
            us: Option<&'static str>,
        ) -> impl Fn(&str) -> Option<std::ffi::OsString> {
            move |name| match name {
                "HULL_GUEST_PROFILE" => prefix.map(Into::into),
                "HULL_GUEST_PROFILE_US" => us.map(Into::into),
                _ => None,
            }
        }
        assert_eq!(ProfileConfig::from_vars(vars(None, Some("500"))), None);
        let c = ProfileConfig::from_vars(vars(Some("/tmp/p"), Some("5"))).unwrap();
        assert_eq!(c.prefix, PathBuf::from("/tmp/p"));
        assert_eq!(c.interval, Duration::from_micros(100));
        let c = ProfileConfig::from_vars(vars(Some("/tmp/p"), Some("junk"))).unwrap();
        assert_eq!(c.interval, Duration::from_millis(1));
        let c = ProfileConfig::from_vars(vars(Some("/tmp/p"), Some("250"))).unwrap();
        assert_eq!(c.interval, Duration::from_micros(250));
    }
}
