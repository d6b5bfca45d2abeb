//! What the host and hull's guest agent agree on.
//!
//! Two channels: the status lines the agent writes to the first serial port
//! (readiness and shutdown, watched by the host even before vsock is up),
//! and the control protocol over vsock ([`protocol`]). A crate of its own
//! so the host links these types without the agent's layer unpacker.

#![warn(missing_docs)]

pub mod protocol;

/// Version of the agent (the protocol has its own: [`protocol::VERSION`]).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Prefix of every status line the agent writes on the serial port.
pub const STATUS_PREFIX: &str = "hull-agent: ";

/// A status line of the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// The agent finished setting up the guest; `uptime` is the guest
    /// kernel's own clock at that moment, in seconds.
    Ready {
        /// Agent version.
        version: String,
        /// Guest uptime in seconds.
        uptime: f64,
    },
    /// The agent is about to reset the VM; `code` is its exit status.
    Shutdown {
        /// 0 for a clean shutdown.
        code: i32,
    },
    /// The agent hit an error it cannot recover from.
    Error(String),
}

impl Status {
    /// The line (without newline) the agent writes.
    pub fn to_line(&self) -> String {
        match self {
            Status::Ready { version, uptime } => {
                format!("{STATUS_PREFIX}ready version={version} uptime={uptime:.2}")
            }
            Status::Shutdown { code } => format!("{STATUS_PREFIX}shutdown status={code}"),
            Status::Error(msg) => format!("{STATUS_PREFIX}error {msg}"),
        }
    }

    /// Parses a serial line; `None` for anything that is not a status line.
    pub fn parse(line: &str) -> Option<Status> {
        let rest = line.trim_end_matches(['\r', '\n']);
        let rest = &rest[rest.find(STATUS_PREFIX)? + STATUS_PREFIX.len()..];
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        if rest.starts_with("ready") {
            Some(Status::Ready {
                version: field("version")?.to_string(),
                uptime: field("uptime")?.parse().ok()?,
            })
        } else if rest.starts_with("shutdown") {
            Some(Status::Shutdown {
                code: field("status")?.parse().ok()?,
            })
        } else {
            rest.strip_prefix("error ")
                .map(|m| Status::Error(m.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for s in [
            Status::Ready {
                version: "0.1.0".into(),
                uptime: 38.25,
            },
            Status::Shutdown { code: 0 },
            Status::Error("mount /proc: EPERM".into()),
        ] {
            assert_eq!(Status::parse(&s.to_line()), Some(s));
        }
    }

    #[test]
    fn other_lines_are_not_status() {
        assert_eq!(Status::parse("[    0.000000] Linux version 6.1"), None);
        assert_eq!(Status::parse("hull-agent: ready version=1"), None);
        // Kernel messages may precede the status on the same line.
        assert_eq!(
            Status::parse("xx hull-agent: shutdown status=3\r\n"),
            Some(Status::Shutdown { code: 3 })
        );
    }
}
