module gosched/benches/go/bimodal

go 1.19
