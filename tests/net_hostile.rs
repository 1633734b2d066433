//! The netpoller in hostile conditions: a seccomp profile that refuses
//! `epoll_pwait2`, sockets shared by goroutines of two runtimes, several
//! goroutines waiting in one direction of one socket with and without
//! deadlines. Scenarios that used to hang or spin run in a child process
//! (`common::run_child`) or under a time bound, so a regression fails
//! the test instead of stalling the suite.

mod common;

use std::time::{Duration, Instant};

use gosched::net::UdpSocket;
use gosched::Builder;

// ---------------------------------------------------------------------------
// epoll_pwait2 refused by a seccomp profile

/// Installs a seccomp filter on every thread of this process that makes
/// `epoll_pwait2` fail with EPERM (as container profiles that refuse
/// unknown system calls do). Returns false if the kernel refuses filters.
fn refuse_epoll_pwait2() -> bool {
    let filter = [
        // A = the system call number.
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_epoll_pwait2 as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return false;
    }
    // SAFETY: `prog` points at `filter`, both live across the call; the
    // kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    r == 0
}

/// Under a seccomp profile that answers `epoll_pwait2` with EPERM, the
/// poller falls back to `epoll_wait`: a goroutine parked on a socket gets
/// its datagram, and the idle runtime does not spin meanwhile. (The error
/// used to be taken for "no events": every wait returned at once, the
/// datagram was never seen and the sleeping M burnt a whole CPU.)
#[test]
fn a_seccomp_refused_epoll_pwait2_falls_back_to_epoll_wait() {
    const TEST: &str = "a_seccomp_refused_epoll_pwait2_falls_back_to_epoll_wait";
    if common::child_role().as_deref() == Some("seccomp") {
        if !refuse_epoll_pwait2() {
            println!("SKIP: seccomp filters unavailable");
            return;
        }
        // SAFETY: epoll_pwait2 with an invalid fd and null pointers: the
        // filter answers before the kernel looks at them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                -1,
                0usize,
                1,
                0usize,
                0usize,
                0usize,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (r, errno),
            (-1, Some(libc::EPERM)),
            "the filter is not in force"
        );
        let rt = Builder::new().procs(1).build().unwrap();
        let (got, waited, cpu) = rt.block_on(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
            let to = s.local_addr().unwrap();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(500));
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                c.send_to(b"through", to).unwrap();
            });
            let t = Instant::now();
            let cpu = common::process_cpu_time();
            let mut buf = [0u8; 16];
            let n = s.recv(&mut buf);
            let (waited, cpu) = (t.elapsed(), common::process_cpu_time() - cpu);
            sender.join().unwrap();
            (n.map(|n| buf[..n].to_vec()), waited, cpu)
        });
        println!("waited={waited:?} cpu={cpu:?}");
        assert_eq!(got.unwrap(), b"through");
        assert!(
            waited < Duration::from_secs(10),
            "the datagram took {waited:?}"
        );
        // Idle in the poller: a few ms of CPU; spinning: all of `waited`.
        assert!(
            cpu < waited / 2,
            "the idle runtime used {cpu:?} of CPU in {waited:?}: its poller spins"
        );
        return;
    }
    let out = common::run_child(TEST, "seccomp", &[]);
    assert!(out.status.success(), "{}", out.describe());
    if out.stdout.contains("SKIP:") {
        eprintln!("seccomp filters unavailable here: the fallback was not exercised");
    }
}
