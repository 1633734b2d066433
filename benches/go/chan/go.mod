module gosched/benches/go/chan

go 1.19
