// Twin of `buffered/4x4` in benches/chan.rs: 4 producers and 4 consumers on
// a 128-slot channel, nanoseconds per value, median of 7 runs after one
// warm-up. Run: cd benches/go/chan && go run ./buffered
package main

import (
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"
)

const n = 2000000
const sides = 4
const runs = 7

func once() float64 {
	ch := make(chan int, 128)
	var start, prod, cons sync.WaitGroup
	start.Add(1)
	sums := make([]int, sides)
	for c := 0; c < sides; c++ {
		cons.Add(1)
		go func(c int) {
			s := 0
			for v := range ch {
				s += v
			}
			sums[c] = s
			cons.Done()
		}(c)
	}
	for p := 0; p < sides; p++ {
		prod.Add(1)
		go func(p int) {
			start.Wait()
			for i := 0; i < n/sides; i++ {
				ch <- p + i
			}
			prod.Done()
		}(p)
	}
	t := time.Now()
	start.Done()
	prod.Wait()
	close(ch)
	cons.Wait()
	return float64(time.Since(t).Nanoseconds()) / n
}

func main() {
	once()
	v := make([]float64, runs)
	for i := range v {
		v[i] = once()
	}
	sort.Float64s(v)
	fmt.Printf("%-14s %12s %12s %12s  %-16s notes\n", "bench", "median", "min", "max", "unit")
	fmt.Printf("%-14s %12.1f %12.1f %12.1f  %-16s %.1f Mvalues/s, %d Ps, %s\n", "buffered/4x4", v[runs/2], v[0], v[runs-1], "ns/value", 1e3/v[runs/2], runtime.GOMAXPROCS(0), runtime.Version())
}
