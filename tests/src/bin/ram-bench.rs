//! ram's benchmarks: each measures the same work in an enforced and in an unenforced cgroup,
//! side by side in one run (rounds interleaved, so drift hits both alike), and prints the ratio
//! of medians. Run with `cargo xtask bench` (root; builds ram in release mode).
//!
//! connect-loopback: TCP connect + close to a listener on 127.0.0.1. The enforced cgroup runs
//! all four gate programs (connect4_gate judges every connect).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Stdio,
    thread,
    time::Instant,
};

use ram_tests::{Daemon, TestCgroup};

/// Rounds per side; the median of these is compared.
const ROUNDS: usize = 41;
/// Connects per round: long enough (~50 ms) to dwarf timer noise.
const CONNECTS_PER_ROUND: usize = 2_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("worker") {
        return worker(&args[2], args[3].parse()?);
    }
    connect_loopback()
}

/// `ram-bench worker ADDR N`: N connect+close to ADDR, prints nanoseconds per connect.
fn worker(addr: &str, count: usize) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let start = Instant::now();
    for _ in 0..count {
        let stream = TcpStream::connect(addr)?;
        reset_on_close(&stream);
    }
    let per_connect = start.elapsed().as_nanos() as f64 / count as f64;
    println!("{per_connect}");
    std::io::stdout().flush()?;
    Ok(())
}

/// SO_LINGER 0: close sends RST instead of leaving TIME_WAIT, so 80,000 connects do not run out
/// of ephemeral ports.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn run_worker(cgroup: &TestCgroup, addr: SocketAddr) -> anyhow::Result<f64> {
    let output = cgroup
        .command(std::env::current_exe()?)
        .args(["worker", &addr.to_string(), &CONNECTS_PER_ROUND.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "worker failed: {}", output.status);
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Pins this process (and the workers it starts, which inherit it) to one CPU: client, server
/// and kernel work then share a core the same way on both sides, which removes most of the
/// scheduling noise of a small machine.
fn pin_to_last_cpu() {
    // SAFETY: plain sched_setaffinity(2) on ourselves with an initialized set.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn connect_loopback() -> anyhow::Result<()> {
    pin_to_last_cpu();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    // std listens with a backlog of 128; an accept thread that falls behind by that much makes
    // the kernel drop SYNs, and each drop costs a client a 1 s retransmission. Re-listen deeper.
    // SAFETY: listen(2) on a socket we own.
    anyhow::ensure!(
        unsafe { libc::listen(listener.as_raw_fd(), 4096) } == 0,
        "listen"
    );
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            // Accept and drop; a read of 0 bytes is not needed.
            drop(stream.map(|mut s| s.read(&mut [0u8; 0])));
        }
    });

    let plain = TestCgroup::new();
    let enforced = TestCgroup::new();
    let _daemon = Daemon::start(
        "[registry_access]\nallow_loopback = true\n[dns]\nresolvers = []\n",
        &[enforced.path()],
    )?;

    // Warm-up: page cache, socket caches, branch predictors.
    run_worker(&plain, addr)?;
    run_worker(&enforced, addr)?;

    let (mut plain_ns, mut enforced_ns) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which side goes first.
        if round % 2 == 0 {
            plain_ns.push(run_worker(&plain, addr)?);
            enforced_ns.push(run_worker(&enforced, addr)?);
        } else {
            enforced_ns.push(run_worker(&enforced, addr)?);
            plain_ns.push(run_worker(&plain, addr)?);
        }
    }
    // Each round's two runs are adjacent in time: their ratio cancels slow drift of the machine.
    let mut paired: Vec<f64> = enforced_ns
        .iter()
        .zip(&plain_ns)
        .map(|(e, p)| e / p)
        .collect();
    let paired_median = median(&mut paired);
    let (plain_median, enforced_median) = (median(&mut plain_ns), median(&mut enforced_ns));
    println!(
        "connect-loopback: TCP connect+close to 127.0.0.1, {ROUNDS} rounds x {CONNECTS_PER_ROUND} \
         connects per side"
    );
    println!("  unenforced cgroup: {plain_median:.0} ns per connect (median round)");
    println!("  enforced cgroup:   {enforced_median:.0} ns per connect (median round)");
    println!(
        "  ratio enforced/unenforced: {paired_median:.3} (median of per-round ratios; ratio of \
         medians {:.3}; goal <= 1.03)",
        enforced_median / plain_median
    );
    Ok(())
}
