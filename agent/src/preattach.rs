//! Streams attached ahead of their process (`PREATTACH <key> <kind>`), so
//! that creating, attaching and starting a process cost the host one
//! round trip (`Run`): the host opens the streams while the agent works
//! through the request, and the `Run` waits here until they are in.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent::protocol::StdioKind;

/// Keys held at most: streams of `Run`s that never came (the host failed
/// earlier in its batch) are dropped, oldest first, beyond this many.
const MAX_KEYS: usize = 16;

/// When a key's first stream came, and its streams by [`StdioKind`]
/// (stdin, stdout, stderr, tty).
type Held = HashMap<u64, (Instant, [Option<OwnedFd>; 4])>;

/// Streams by key.
#[derive(Default)]
pub struct PreAttachments {
    streams: Mutex<Held>,
    arrived: Condvar,
}

impl PreAttachments {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `fd` as stream `kind` of `key` once `accepted` (which tells the
    /// host `OK` before the process can write to the stream) agrees.
    /// False, and `fd` dropped, when `key` has that stream already.
    pub fn add(
        &self,
        key: u64,
        kind: StdioKind,
        fd: OwnedFd,
        accepted: impl FnOnce() -> bool,
    ) -> bool {
        let mut streams = self.lock();
        if streams
            .get(&key)
            .is_some_and(|(_, s)| s[kind as usize].is_some())
        {
            return false;
        }
        if !accepted() {
            return false;
        }
        if !streams.contains_key(&key) && streams.len() >= MAX_KEYS {
            let oldest = streams.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                streams.remove(&k);
            }
        }
        let entry = streams
            .entry(key)
            .or_insert_with(|| (Instant::now(), Default::default()));
        entry.1[kind as usize] = Some(fd);
        self.arrived.notify_all();
        true
    }

    /// Takes the streams of `key` once all of `kinds` are in, waiting at
    /// most `patience`; the error names the streams that did not come.
    pub fn take(
        &self,
        key: u64,
        kinds: &[StdioKind],
        patience: Duration,
    ) -> Result<[Option<OwnedFd>; 4], String> {
        let deadline = Instant::now() + patience;
        let mut streams = self.lock();
        loop {
            let missing: Vec<&str> = kinds
                .iter()
                .filter(|k| {
                    streams
                        .get(&key)
                        .is_none_or(|(_, s)| s[**k as usize].is_none())
                })
                .map(|k| k.word())
                .collect();
            if missing.is_empty() {
                return Ok(streams.remove(&key).map(|(_, fds)| fds).unwrap_or_default());
            }
            let now = Instant::now();
            if now >= deadline {
                streams.remove(&key);
                return Err(format!("streams not attached: {}", missing.join(", ")));
            }
            streams = self
                .arrived
                .wait_timeout(streams, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    fn fd() -> OwnedFd {
        OwnedFd::from(UnixStream::pair().unwrap().0)
    }

    #[test]
    fn streams_are_taken_once_all_are_in_even_when_they_come_late() {
        let p = Arc::new(PreAttachments::default());
        assert!(p.add(7, StdioKind::Stdout, fd(), || true));
        let late = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                assert!(p.add(7, StdioKind::Stderr, fd(), || true));
            })
        };
        let kinds = [StdioKind::Stdout, StdioKind::Stderr];
        let fds = p.take(7, &kinds, Duration::from_secs(10)).unwrap();
        late.join().unwrap();
        assert!(fds[1].is_some() && fds[2].is_some());
        assert!(fds[0].is_none() && fds[3].is_none());
        // Taken: a second take finds nothing.
        let err = p.take(7, &kinds, Duration::from_millis(10)).unwrap_err();
        assert_eq!(err, "streams not attached: stdout, stderr");
    }

    #[test]
    fn a_missing_stream_is_named_and_its_key_forgotten() {
        let p = PreAttachments::default();
        assert!(p.add(1, StdioKind::Stdout, fd(), || true));
        let err = p
            .take(
                1,
                &[StdioKind::Stdout, StdioKind::Stdin],
                Duration::from_millis(20),
            )
            .unwrap_err();
        assert_eq!(err, "streams not attached: stdin");
        assert!(p.lock().is_empty());
    }

    #[test]
    fn a_stream_twice_or_refused_by_the_answer_is_not_held() {
        let p = PreAttachments::default();
        assert!(p.add(1, StdioKind::Tty, fd(), || true));
        assert!(!p.add(1, StdioKind::Tty, fd(), || true));
        assert!(!p.add(2, StdioKind::Tty, fd(), || false));
        assert_eq!(p.lock().len(), 1);
    }

    #[test]
    fn keys_never_taken_are_bounded() {
        let p = PreAttachments::default();
        for key in 0..100 {
            assert!(p.add(key, StdioKind::Stdout, fd(), || true));
        }
        let held = p.lock();
        assert_eq!(held.len(), MAX_KEYS);
        assert!(held.contains_key(&99));
    }
}
