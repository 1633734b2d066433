// Command spawn is the Go twin of benches/core.rs spawn_join: it starts
// goroutines that store their index, waits for them all, and prints the cost
// per goroutine.
//
//	cd benches/go/core/spawn && go run .
//
// Two shapes, as in the Rust bench: batches of 1,000 (1k_batches) and one
// batch of 1,000,000 (1M_batch). "Join" is a sync.WaitGroup, the idiomatic
// Go spelling; the result goes through a slice. GOMAXPROCS is Go's default
// (the number of CPUs), as the Rust runtime's default procs.
package main

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"
)

// batch spawns n goroutines that store their index, waits for all of them
// and checks the sum.
func batch(n int) {
	res := make([]int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			res[i] = i
			wg.Done()
		}(i)
	}
	wg.Wait()
	sum := 0
	for _, v := range res {
		sum += v
	}
	if sum != n*(n-1)/2 {
		panic("bad sum")
	}
}

// measure runs rounds of `batches` batches of n goroutines and returns the
// ns per goroutine of each round, sorted.
func measure(n, batches, rounds int) []float64 {
	batch(n) // warm up: grow the stacks and G free lists
	out := make([]float64, 0, rounds)
	for r := 0; r < rounds; r++ {
		t := time.Now()
		for b := 0; b < batches; b++ {
			batch(n)
		}
		out = append(out, float64(time.Since(t).Nanoseconds())/float64(n*batches))
	}
	sort.Float64s(out)
	return out
}

func report(name string, ns []float64) {
	fmt.Printf("%-22s ns/goroutine: median %.1f  min %.1f  max %.1f  (%d rounds)\n",
		name, ns[len(ns)/2], ns[0], ns[len(ns)-1], len(ns))
}

func main() {
	fmt.Printf("go spawn+join, %s, GOMAXPROCS=%d\n", runtime.Version(), runtime.GOMAXPROCS(0))
	report("spawn_join/1k_batches", measure(1000, 1000, 10))
	report("spawn_join/1M_batch", measure(1000000, 1, 10))
}
