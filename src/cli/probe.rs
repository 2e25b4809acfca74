//! `lstm-forecast probe`: GET a URL and succeed on a 2xx. The image has no curl, and a container
//! health check (Docker Swarm, Compose) runs a command inside the container.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

use super::args::ProbeArgs;

pub fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let rest = args
        .url
        .strip_prefix("http://")
        .with_context(|| format!("`{}` is not an http:// URL", args.url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let timeout = Duration::from_secs_f64(args.timeout_seconds);
    let address = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving `{authority}` (host:port)"))?
        .next()
        .with_context(|| format!("`{authority}` resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending the request to {address}"))?;
    // The status line is all a health check needs.
    let mut head = [0u8; 64];
    let read = stream
        .read(&mut head)
        .with_context(|| format!("reading the answer of {}", args.url))?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{} answered no HTTP status line", args.url))?;
    if !(200..300).contains(&status) {
        bail!("{} answered {status}", args.url);
    }
    println!("{} answered {status}", args.url);
    Ok(())
}
