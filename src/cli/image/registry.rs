//! `hull pull`, `push`, `login`, `logout`: talking to registries.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context};
use images::platform::Platform;
use images::registry::{self, Credentials, Options};
use images::{Reference, Store};

use super::RegistryArgs;

/// Runs `hull pull`.
pub fn pull(
    store: &Store,
    root: &Path,
    reference: &str,
    platform: Option<&str>,
    registry: RegistryArgs,
    quiet: bool,
) -> anyhow::Result<u8> {
    let r = Reference::parse(reference)?;
    let platform = platform.map(Platform::parse).transpose()?;
    let opts = options(root, &r, registry, platform, !quiet)?;
    let rep = registry::pull(store, &r, &opts)?;
    if !quiet {
        println!("Digest: {}", rep.digest);
        if rep.downloaded == 0 {
            println!("Status: Image is up to date for {}", r.familiar());
        } else {
            println!("Status: Downloaded newer image for {}", r.familiar());
        }
    }
    println!("{r}");
    Ok(0)
}

/// Runs `hull push`.
pub fn push(
    store: &Store,
    root: &Path,
    reference: &str,
    registry: RegistryArgs,
) -> anyhow::Result<u8> {
    let r = Reference::parse(reference)?;
    let opts = options(root, &r, registry, None, false)?;
    let (d, size, _) = registry::push(store, &r, &opts)?;
    println!("{}: digest: {d} size: {size}", r.tag().unwrap_or("latest"));
    Ok(0)
}

/// Runs `hull login`: the password from the flag or stdin, never both.
pub fn login(
    root: &Path,
    server: &str,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    registry: RegistryArgs,
) -> anyhow::Result<u8> {
    let password = match (password, password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_owned()
        }
        (None, false) => bail!("login needs --username and --password or --password-stdin"),
    };
    let Some(username) = username else {
        bail!("login needs --username");
    };
    let opts = Options {
        insecure_registries: registry.insecure,
        ..Options::default()
    };
    registry::login(root, server, Credentials { username, password }, &opts)?;
    println!("Login Succeeded");
    Ok(0)
}

/// Runs `hull logout`.
pub fn logout(root: &Path, server: &str) -> anyhow::Result<u8> {
    if registry::logout(root, server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(0)
}

fn options(
    root: &Path,
    r: &Reference,
    reg: RegistryArgs,
    platform: Option<Platform>,
    progress: bool,
) -> anyhow::Result<Options> {
    Ok(Options {
        insecure_registries: reg.insecure,
        platform,
        progress: progress && std::io::stderr().is_terminal(),
        credentials: registry::lookup(root, r.domain())?,
    })
}
