//! `-v` and `--mount` values: which volume goes where in a container.

use serde::{Deserialize, Serialize};

/// Errors in `-v` / `--mount` values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A bind mount without a source.
    #[error("bind mount {0:?} has no source")]
    NoSource(String),
    /// Malformed value.
    #[error("invalid volume specification {0:?}: {1}")]
    Invalid(String, &'static str),
}

/// What one `-v` or `--mount` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A volume (named, or anonymous while unnamed).
    Volume(VolumeMount),
    /// A host directory, as given (resolved by [`super::bind::resolve_source`]).
    Bind {
        /// The host path as given.
        source: String,
        /// Absolute path in the container.
        target: String,
        /// Mounted read-only.
        read_only: bool,
    },
}

/// A volume mounted in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name (none yet for an anonymous one being parsed).
    pub name: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Made for this container (removed with it by `--rm` / `rm -v`).
    pub anonymous: bool,
}

fn check_target(value: &str, target: &str) -> Result<String, SpecError> {
    if !target.starts_with('/') {
        return Err(SpecError::Invalid(
            value.into(),
            "the path in the container must be absolute",
        ));
    }
    let clean = crate::build::engine::state::clean_absolute(target);
    if clean == "/" {
        return Err(SpecError::Invalid(
            value.into(),
            "a volume cannot be mounted at /",
        ));
    }
    Ok(clean)
}

fn is_host_path(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

/// Parses `-v SOURCE:TARGET[:ro|rw]` or `-v TARGET` (anonymous).
pub fn parse_volume_flag(value: &str) -> Result<Requested, SpecError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [target] => (None, target, None),
        [source, target] => (Some(source), target, None),
        [source, target, mode] => (Some(source), target, Some(mode)),
        _ => return Err(SpecError::Invalid(value.into(), "too many colons")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => {
            return Err(SpecError::Invalid(
                value.into(),
                "the mode must be ro or rw",
            ))
        }
    };
    let target = check_target(value, target)?;
    if let Some(s) = source.filter(|s| is_host_path(s)) {
        return Ok(Requested::Bind {
            source: s.into(),
            target,
            read_only,
        });
    }
    Ok(Requested::Volume(VolumeMount {
        name: source.unwrap_or_default().to_string(),
        target,
        read_only,
        anonymous: source.is_none(),
    }))
}

/// Parses `--mount type=volume|bind,source=NAME|/dir,target=/path[,readonly]`.
pub fn parse_mount_flag(value: &str) -> Result<Requested, SpecError> {
    let mut kind = "volume";
    let (mut source, mut target, mut read_only) = (None, None, false);
    for field in value.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k {
            "type" => kind = v,
            "source" | "src" => source = Some(v),
            "target" | "destination" | "dst" => target = Some(v),
            "readonly" | "ro" => read_only = matches!(v, "" | "true" | "1"),
            _ => return Err(SpecError::Invalid(value.into(), "unknown field")),
        }
    }
    let target = target.ok_or(SpecError::Invalid(value.into(), "target is missing"))?;
    let target = check_target(value, target)?;
    match kind {
        "volume" => Ok(Requested::Volume(VolumeMount {
            name: source.unwrap_or_default().to_string(),
            target,
            read_only,
            anonymous: source.is_none_or(str::is_empty),
        })),
        "bind" => match source.filter(|s| !s.is_empty()) {
            Some(s) => Ok(Requested::Bind {
                source: s.into(),
                target,
                read_only,
            }),
            None => Err(SpecError::NoSource(value.into())),
        },
        _ => Err(SpecError::Invalid(
            value.into(),
            "type must be volume or bind",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, target: &str, ro: bool, anon: bool) -> Requested {
        Requested::Volume(VolumeMount {
            name: name.into(),
            target: target.into(),
            read_only: ro,
            anonymous: anon,
        })
    }

    fn bind(source: &str, target: &str, ro: bool) -> Requested {
        Requested::Bind {
            source: source.into(),
            target: target.into(),
            read_only: ro,
        }
    }

    #[test]
    fn volume_flags() {
        assert_eq!(
            parse_volume_flag("data:/var/lib/x"),
            Ok(m("data", "/var/lib/x", false, false))
        );
        assert_eq!(
            parse_volume_flag("data:/x/:ro"),
            Ok(m("data", "/x", true, false))
        );
        assert_eq!(
            parse_volume_flag("/cache"),
            Ok(m("", "/cache", false, true))
        );
        assert_eq!(parse_volume_flag("/srv:/x"), Ok(bind("/srv", "/x", false)));
        assert_eq!(
            parse_volume_flag("./src:/x/:ro"),
            Ok(bind("./src", "/x", true))
        );
        assert!(parse_volume_flag("/srv:rel").is_err());
        assert!(parse_volume_flag("data:rel").is_err());
        assert!(parse_volume_flag("data:/").is_err());
        assert!(parse_volume_flag("data:/x:rx").is_err());
        assert!(parse_volume_flag("a:/b:ro:x").is_err());
    }

    #[test]
    fn mount_flags() {
        assert_eq!(
            parse_mount_flag("type=volume,source=db,target=/data,readonly"),
            Ok(m("db", "/data", true, false))
        );
        assert_eq!(
            parse_mount_flag("target=/data"),
            Ok(m("", "/data", false, true))
        );
        assert_eq!(
            parse_mount_flag("type=bind,source=/srv,target=/x,readonly"),
            Ok(bind("/srv", "/x", true))
        );
        assert!(matches!(
            parse_mount_flag("type=bind,target=/x"),
            Err(SpecError::NoSource(_))
        ));
        assert!(parse_mount_flag("type=volume,source=db").is_err());
        assert!(parse_mount_flag("type=tmpfs,target=/x").is_err());
        assert!(parse_mount_flag("type=volume,bogus=1,target=/x").is_err());
    }
}
