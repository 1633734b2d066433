module gosched/benches/go/migration

go 1.19
