module gosched/benches/go/core

go 1.19
