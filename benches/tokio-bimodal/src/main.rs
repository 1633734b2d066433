//! tokio twin of the servers of gosched's `benches/bimodal`: a
//! `current_thread` runtime, one task per connection, the same handler
//! (read a 16-byte request, spin its service time, reply with the id; the
//! loop and its calibration are `benches/bimodal/spin.rs`, included here).
//! The spin calls nothing and never awaits, so a long request holds the
//! runtime's only thread until it is done: tokio has no preemption.
//! Prints `ADDR 127.0.0.1:port STEPS_PER_NS` once it listens; the driver
//! (`cargo bench --bench bimodal`) starts it pinned to one CPU.

#[path = "../../bimodal/spin.rs"]
#[allow(dead_code)]
mod spin;

use spin::{Spinner, REQUEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn handle(mut s: TcpStream, sp: Spinner) -> std::io::Result<()> {
    let mut req = [0u8; REQUEST];
    loop {
        match s.read_exact(&mut req).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let (id, ns) = spin::parse(&req);
        sp.spin(ns);
        s.write_all(&id.to_le_bytes()).await?;
    }
}

fn main() -> std::io::Result<()> {
    let sp = Spinner::calibrate();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        spin::announce(l.local_addr()?, sp.steps_per_ns);
        loop {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            tokio::spawn(handle(s, sp));
        }
    })
}
