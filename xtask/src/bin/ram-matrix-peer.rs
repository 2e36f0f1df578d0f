//! `ram-matrix-peer`: the DNS server, spoofer and client of the kernel-matrix VMs, where there
//! is no python and no dnsmasq. Standard library only; `cargo xtask matrix` builds it and puts
//! it in the initramfs next to `ram`.
//!
//! ```text
//! ram-matrix-peer serve ADDR NAME=IP[/badid|/silent]...  # answer A queries on ADDR:53/udp
//! ram-matrix-peer query RESOLVER NAME [--txid N] [--any-id]  # one A query; prints the answer
//! ram-matrix-peer spoof FROM PORT NAME TXID IP              # send a forged answer to 127.0.0.1:PORT
//! ram-matrix-peer connect ADDR PORT                         # TCP connect: reached / EPERM / ...
//! ram-matrix-peer raw                                       # a raw IPv4 socket: made / EPERM / ...
//! ram-matrix-peer socket sctp|dccp|l2tp|packet              # that socket: made / EPERM / ...
//! ram-matrix-peer listen ADDR PORT      # TCP server: prints `bytes N` per connection (what came)
//! ram-matrix-peer hello ADDR PORT NAME  # a TLS ClientHello naming NAME: sent N / EACCES / ...
//! ```
//!
//! `serve`: `/badid` answers with the transaction id plus one, `/silent` never answers, and
//! names not listed get NXDOMAIN. `query` prints `port N` (its local port) first, then
//! `answer IP`, `answer none` or `timeout`; with `--any-id` it takes a reply whatever its
//! transaction id, as a careless client would.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::exit,
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["serve", addr, names @ ..] => serve(addr, names),
        ["query", resolver, name, rest @ ..] => query(resolver, name, rest),
        ["spoof", from, port, name, txid, ip] => spoof(from, port, name, txid, ip),
        ["connect", addr, port] => connect(addr, port),
        ["raw"] => raw(),
        ["socket", kind] => socket(kind),
        ["listen", addr, port] => listen(addr, port),
        ["hello", addr, port, name] => hello(addr, port, name),
        _ => Err("usage: see the head of xtask/src/bin/ram-matrix-peer.rs".into()),
    };
    if let Err(err) = result {
        println!("error {err}");
        exit(1);
    }
}

#[path = "../../../tests/src/client_hello.rs"]
mod client_hello;

type Result<T> = std::result::Result<T, String>;

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse().map_err(|_| format!("bad {what}: {text}"))
}

/// How the server answers one name.
enum Answer {
    Address(Ipv4Addr),
    /// The address, under a transaction id that does not match the query's.
    BadId(Ipv4Addr),
    Silent,
}

fn serve(addr: &str, names: &[&str]) -> Result<()> {
    let mut table = Vec::new();
    for entry in names {
        let (name, value) = entry
            .split_once('=')
            .ok_or(format!("bad NAME=IP: {entry}"))?;
        let answer = match value.split_once('/') {
            Some((ip, "badid")) => Answer::BadId(parse(ip, "address")?),
            Some((_, "silent")) => Answer::Silent,
            None => Answer::Address(parse(value, "address")?),
            Some(_) => return Err(format!("bad answer: {value}")),
        };
        table.push((name.to_ascii_lowercase(), answer));
    }
    let socket = UdpSocket::bind((parse::<Ipv4Addr>(addr, "address")?, 53))
        .map_err(|err| format!("binding {addr}:53: {err}"))?;
    println!("serving {addr}:53");
    let mut buf = [0u8; 512];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..len];
        let Some((name, question_end)) = question(query) else {
            continue;
        };
        let txid = u16::from_be_bytes([query[0], query[1]]);
        let found = table.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
        let reply = match found {
            None => message(txid, 0x8183, &query[12..question_end], None),
            Some(Answer::Silent) => continue,
            Some(Answer::Address(ip)) => message(txid, 0x8180, &query[12..question_end], Some(*ip)),
            Some(Answer::BadId(ip)) => message(
                txid.wrapping_add(1),
                0x8180,
                &query[12..question_end],
                Some(*ip),
            ),
        };
        let _ = socket.send_to(&reply, peer);
    }
}

/// The lower-cased question name of `msg` and where its question section ends.
fn question(msg: &[u8]) -> Option<(String, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let end = pos + 5;
    (end <= msg.len()).then(|| (labels.join("."), end))
}

/// A DNS message: header, the question (wire form, with type and class), and one A record
/// whose owner points at the question name.
fn message(txid: u16, flags: u16, question: &[u8], answer: Option<Ipv4Addr>) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend(txid.to_be_bytes());
    msg.extend(flags.to_be_bytes());
    msg.extend(1u16.to_be_bytes());
    msg.extend(u16::from(answer.is_some()).to_be_bytes());
    msg.extend([0, 0, 0, 0]);
    msg.extend(question);
    if let Some(ip) = answer {
        msg.extend([0xc0, 12, 0, 1, 0, 1]);
        msg.extend(300u32.to_be_bytes());
        msg.extend(4u16.to_be_bytes());
        msg.extend(ip.octets());
    }
    msg
}

fn wire_question(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.extend([0, 0, 1, 0, 1]);
    out
}

/// The first A record of an answer, if any.
fn first_a(msg: &[u8]) -> Option<Ipv4Addr> {
    let (_, mut pos) = question(msg)?;
    let count = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    for _ in 0..count {
        // Owner: labels, or a compression pointer.
        loop {
            let len = *msg.get(pos)?;
            if len & 0xc0 == 0xc0 {
                pos += 2;
                break;
            }
            pos += 1 + len as usize;
            if len == 0 {
                break;
            }
        }
        let fixed = msg.get(pos..pos + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlength = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let rdata = msg.get(pos + 10..pos + 10 + rdlength)?;
        if rtype == 1 && rdlength == 4 {
            return Some(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        pos += 10 + rdlength;
    }
    None
}

fn query(resolver: &str, name: &str, rest: &[&str]) -> Result<()> {
    let mut txid: u16 = 0x5a5a;
    let mut any_id = false;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--txid" => txid = parse(rest.next().ok_or("--txid needs a value")?, "txid")?,
            "--any-id" => any_id = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    let resolver: Ipv4Addr = parse(resolver, "resolver")?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|err| err.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    let mut msg = Vec::new();
    msg.extend(txid.to_be_bytes());
    msg.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    msg.extend(wire_question(name));
    if let Err(err) = socket.send_to(&msg, (resolver, 53)) {
        println!("send {}", describe(&err));
        return Ok(());
    }
    let port = socket.local_addr().map_err(|err| err.to_string())?.port();
    println!("port {port}");
    let _ = std::io::stdout().flush();
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let reply = &buf[..len];
                if !any_id && reply.get(..2) != Some(&txid.to_be_bytes()) {
                    continue;
                }
                match first_a(reply) {
                    Some(ip) => println!("answer {ip}"),
                    None => println!("answer none"),
                }
                return Ok(());
            }
            Err(_) => {
                println!("timeout");
                return Ok(());
            }
        }
    }
}

fn spoof(from: &str, port: &str, name: &str, txid: &str, ip: &str) -> Result<()> {
    let from: Ipv4Addr = parse(from, "source address")?;
    let port: u16 = parse(port, "port")?;
    let txid: u16 = parse(txid, "txid")?;
    let ip: Ipv4Addr = parse(ip, "address")?;
    let question = wire_question(name);
    let reply = message(txid, 0x8180, &question, Some(ip));
    let socket = UdpSocket::bind((from, 53)).map_err(|err| format!("binding {from}:53: {err}"))?;
    socket
        .send_to(&reply, (Ipv4Addr::LOCALHOST, port))
        .map_err(|err| format!("sending the spoof: {err}"))?;
    println!("spoofed {name} -> {ip} from {from}:53 to port {port}");
    Ok(())
}

fn connect(addr: &str, port: &str) -> Result<()> {
    let addr = SocketAddr::new(parse(addr, "address")?, parse(port, "port")?);
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(_) => println!("reached (connected)"),
        Err(err) => println!("{}", describe(&err)),
    }
    Ok(())
}

/// Accepts connections forever; for each, prints how many bytes arrived within 2 s (0: none,
/// the far side's proof that a refused hello never left).
fn listen(addr: &str, port: &str) -> Result<()> {
    let addr = SocketAddr::new(parse(addr, "address")?, parse(port, "port")?);
    let listener = TcpListener::bind(addr).map_err(|err| format!("listening: {err}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut total = 0;
        let mut buf = [0u8; 4096];
        // Bounded: until EOF, a timeout, or 64 KiB.
        while total < 65_536 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        println!("bytes {total}");
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

fn hello(addr: &str, port: &str, name: &str) -> Result<()> {
    let addr = SocketAddr::new(parse(addr, "address")?, parse(port, "port")?);
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(err) => {
            println!("{}", describe(&err));
            return Ok(());
        }
    };
    let data = client_hello::client_hello(name);
    match stream.write_all(&data) {
        Ok(()) => println!("sent {}", data.len()),
        Err(err) if err.raw_os_error() == Some(libc::EACCES) => println!("EACCES"),
        Err(err) => println!("{}", describe(&err)),
    }
    Ok(())
}

/// Makes a raw IPv4 socket (what ping and packet forgers use), and closes it.
fn raw() -> Result<()> {
    // SAFETY: plain socket(2); the descriptor, if any, is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd >= 0 {
        // SAFETY: the descriptor just made, owned by nothing else.
        unsafe { libc::close(fd) };
        println!("made");
    } else {
        println!("{}", describe(&std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes a socket of a protocol the connect/sendmsg hooks never see (SCTP, DCCP, L2TP over
/// IP) or a packet socket, and closes it.
fn socket(kind: &str) -> Result<()> {
    let (family, kind, protocol) = match kind {
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, 132),
        "dccp" => (libc::AF_INET, libc::SOCK_DCCP, 33),
        "l2tp" => (libc::AF_INET, libc::SOCK_DGRAM, 115),
        "packet" => (
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        ),
        other => return Err(format!("unknown socket kind {other}")),
    };
    // SAFETY: plain socket(2); the descriptor, if any, is closed at once.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd >= 0 {
        // SAFETY: the descriptor just made, owned by nothing else.
        unsafe { libc::close(fd) };
        println!("made");
    } else {
        println!("{}", describe(&std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `reached (refused)` for a refusal by the destination (the gate let the connect through),
/// `EPERM` for a gate's denial, the error otherwise.
fn describe(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "reached (refused)".into(),
        _ if err.raw_os_error() == Some(1) => "EPERM".into(),
        _ => format!("error {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_carries_the_question_and_the_address() {
        let q = wire_question("Registry.Test");
        let reply = message(7, 0x8180, &q, Some(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(question(&reply).unwrap().0, "registry.test");
        assert_eq!(first_a(&reply), Some(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(first_a(&message(7, 0x8183, &q, None)), None);
    }
}
