//! Channel benchmarks (placeholder).
fn main() {}
