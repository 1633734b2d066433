/work/main/benches/tokio-bimodal/target/release/deps/gosched_tokio_bimodal_twin-2ed3874a0c5043c9.d: src/main.rs src/../../bimodal/spin.rs

/work/main/benches/tokio-bimodal/target/release/deps/gosched_tokio_bimodal_twin-2ed3874a0c5043c9: src/main.rs src/../../bimodal/spin.rs

src/main.rs:
src/../../bimodal/spin.rs:
