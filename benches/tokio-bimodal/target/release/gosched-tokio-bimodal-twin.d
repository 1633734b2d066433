/work/main/benches/tokio-bimodal/target/release/gosched-tokio-bimodal-twin: /work/main/benches/tokio-bimodal/src/../../bimodal/spin.rs /work/main/benches/tokio-bimodal/src/main.rs
