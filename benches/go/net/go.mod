module gosched/benches/go/net

go 1.19
