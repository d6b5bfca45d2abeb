//! Platforms (`linux/amd64`, `linux/arm64/v8`) and picking one out of an index.

use oci_spec::image::{Arch, Descriptor, Os};

/// Platform errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    Invalid(String),
    /// The index has no manifest for the platform.
    #[error("no image for platform {0} in the index")]
    NotFound(String),
}

/// A target platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH name: `amd64`, `arm64`, ...
    pub arch: String,
    /// CPU variant (`v8`), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform hull itself runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            arch: arch.into(),
            variant: None,
        }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.into(),
                arch: arch.into(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Self {
                os: os.into(),
                arch: arch.into(),
                variant: Some(v.into()),
            }),
            _ => Err(Error::Invalid(s.to_owned())),
        }
    }

    /// True when an index entry (by its `platform` field) fits this platform.
    pub fn matches(&self, d: &Descriptor) -> bool {
        let Some(p) = d.platform() else {
            return false;
        };
        let os_ok = p.os() == &Os::from(self.os.as_str());
        let arch_ok = p.architecture() == &Arch::from(self.arch.as_str());
        // arm64 images often carry variant v8 while users ask for plain arm64.
        let variant_ok = match (&self.variant, p.variant()) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
        };
        os_ok && arch_ok && variant_ok
    }

    /// Picks the first index entry matching this platform.
    pub fn select<'a>(&self, manifests: &'a [Descriptor]) -> Result<&'a Descriptor, Error> {
        manifests
            .iter()
            .find(|d| self.matches(d))
            .ok_or_else(|| Error::NotFound(self.to_string()))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> Descriptor {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_and_selects() {
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v2/x").is_err());
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let list = vec![
            entry(&format!(
                r#"{{"mediaType":"m","size":1,"digest":"{d}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}"#
            )),
            entry(&format!(
                r#"{{"mediaType":"m","size":2,"digest":"{d}","platform":{{"architecture":"amd64","os":"linux"}}}}"#
            )),
        ];
        assert_eq!(
            Platform::parse("linux/amd64")
                .unwrap()
                .select(&list)
                .unwrap()
                .size(),
            2
        );
        assert_eq!(
            Platform::parse("linux/arm64")
                .unwrap()
                .select(&list)
                .unwrap()
                .size(),
            1
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .select(&list)
                .unwrap()
                .size(),
            1
        );
        assert!(Platform::parse("linux/s390x")
            .unwrap()
            .select(&list)
            .is_err());
    }
}
