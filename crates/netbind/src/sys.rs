//! The few system calls the bindings make: `ip` and `nft` as child processes, sysctls through
//! `/proc/sys`, name checks, and reading an interface's addresses.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::Error;

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_owned()))
    }
}

/// nft identifiers: a letter, then letters, digits and `_`.
pub(crate) fn check_table(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Table(name.to_owned()))
    }
}

pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    use std::io::Write as _;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let spawn_err = |source| Error::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_err)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<String, Error> {
    run("ip", args, None)
}

pub(crate) fn nft(script: &str) -> Result<(), Error> {
    run("nft", &["-f", "-"], Some(script)).map(drop)
}

pub(crate) fn link_exists(name: &str) -> Result<bool, Error> {
    let out = run("ip", &["-o", "link", "show"], None)?;
    Ok(out.lines().any(|l| {
        l.split(": ")
            .nth(1)
            .map(|n| n.split('@').next() == Some(name))
            .unwrap_or(false)
    }))
}

/// The word after `key` in `ip -o` output.
pub(crate) fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut words = text.split_whitespace();
    words.by_ref().find(|w| *w == key)?;
    words.next()
}

fn discover_err(ifname: &str, what: &'static str) -> Error {
    Error::Discover {
        ifname: ifname.to_owned(),
        what,
    }
}

pub(crate) fn interface_mtu(ifname: &str) -> Result<u16, Error> {
    let out = ip(&["-o", "link", "show", "dev", ifname])?;
    word_after(&out, "mtu")
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| discover_err(ifname, "mtu"))
}

pub(crate) fn interface_mac(ifname: &str) -> Result<[u8; 6], Error> {
    let out = ip(&["-o", "link", "show", "dev", ifname])?;
    word_after(&out, "link/ether")
        .and_then(crate::parse_mac)
        .ok_or_else(|| discover_err(ifname, "MAC address"))
}

/// The interface's first global IPv4 address and prefix length, if it has one.
pub(crate) fn interface_ipv4_cidr(ifname: &str) -> Result<Option<(Ipv4Addr, u8)>, Error> {
    let out = ip(&["-o", "-4", "addr", "show", "dev", ifname, "scope", "global"])?;
    Ok(word_after(&out, "inet").and_then(parse_cidr))
}

pub(crate) fn interface_ipv4(ifname: &str) -> Result<Ipv4Addr, Error> {
    interface_ipv4_cidr(ifname)?
        .map(|(a, _)| a)
        .ok_or_else(|| discover_err(ifname, "IPv4 address"))
}

/// `A.B.C.D/N`.
pub(crate) fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, n) = s.split_once('/')?;
    let n: u8 = n.parse().ok()?;
    (n <= 32).then_some(())?;
    Some((a.parse().ok()?, n))
}

pub(crate) fn sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| Error::Sysctl { path, source })
}

/// The interface's global IPv6 address, if it has one.
pub(crate) fn interface_ipv6(ifname: &str) -> Result<Option<std::net::Ipv6Addr>, Error> {
    let out = ip(&["-o", "-6", "addr", "show", "dev", ifname, "scope", "global"])?;
    Ok(word_after(&out, "inet6")
        .and_then(|w| w.split('/').next())
        .and_then(|w| w.parse().ok()))
}
