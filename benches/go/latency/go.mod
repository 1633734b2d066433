module gosched/benches/go/latency

go 1.19
