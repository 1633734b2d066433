//! A goroutine parked on the network is not deadlocked (Go: netpoll
//! waiters keep checkdead quiet): the main goroutine waits for a datagram
//! that another process sends later, with no timer pending and no other
//! thread in this process. Without the netpoller's waiters in the check,
//! sysmon reports "all goroutines are asleep" and exits with status 2.
//!
//! Its own `main` (`harness = false`), as tests/deadlock.rs: the deadlock
//! check accounts for every thread of the process, and libtest's threads
//! would make it hold back whatever the netpoller says. The parent runs
//! this binary as the receiver; the receiver runs it again as the sender.

#[path = "common/child.rs"]
#[allow(dead_code)]
mod child;

use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE: &str = "GOSCHED_NET_DEADLOCK_CHILD";

/// How long the sender waits: well past the deadlock check's two looks.
const SENDER_DELAY: Duration = Duration::from_millis(700);

fn receiver() {
    let rt = gosched::Builder::new().procs(2).build().unwrap();
    let got = rt.block_on(|| {
        let u = gosched::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        let mut sender = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, format!("sender:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 8];
        let n = u.recv(&mut buf).unwrap();
        assert!(gosched::blocking(|| sender.wait()).unwrap().success());
        buf[..n].to_vec()
    });
    assert_eq!(got, b"late");
    drop(rt);
}

fn sender(port: u16) {
    std::thread::sleep(SENDER_DELAY);
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"late", ("127.0.0.1", port)).unwrap();
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("receiver") => return receiver(),
        Ok(r) if r.starts_with("sender:") => return sender(r[7..].parse().unwrap()),
        _ => {}
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, "receiver");
    let done = child::run(cmd, Duration::from_secs(30));
    let (status, stderr) = (done.status, done.stderr);
    let name = "a_goroutine_parked_on_the_network_is_not_a_deadlock";
    if status.is_some_and(|s| s.success()) && !stderr.contains("deadlock") {
        println!("test {name} ... ok");
    } else {
        println!("test {name} ... FAILED\nstatus {status:?}; stderr:\n{stderr}");
        std::process::exit(1);
    }
}
