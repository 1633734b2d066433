// Command sleep is the Go twin of benches/core.rs sleep_1ms: time.Sleep(1ms)
// on an otherwise idle runtime, 2,000 times; prints the lateness
// (elapsed - 1 ms) percentiles.
//
//	cd benches/go/core/sleep && go run .
package main

import (
	"fmt"
	"runtime"
	"sort"
	"time"
)

const (
	samples = 2000
	d       = time.Millisecond
)

func main() {
	fmt.Printf("go time.Sleep(1ms) lateness, %s, GOMAXPROCS=%d\n", runtime.Version(), runtime.GOMAXPROCS(0))
	late := make([]time.Duration, 0, samples)
	var sum time.Duration
	for i := 0; i < samples; i++ {
		t := time.Now()
		time.Sleep(d)
		l := time.Since(t) - d
		late = append(late, l)
		sum += l
	}
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	q := func(p float64) float64 {
		i := int(p * float64(len(late)))
		if i >= len(late) {
			i = len(late) - 1
		}
		return float64(late[i].Nanoseconds()) / 1e3
	}
	fmt.Printf("sleep_1ms/percentiles  lateness over %d sleeps on an idle runtime: mean %.1f µs, p50 %.1f µs, "+
		"p90 %.1f µs, p99 %.1f µs, p99.9 %.1f µs, max %.1f µs\n",
		len(late), float64(sum.Nanoseconds())/1e3/samples, q(0.50), q(0.90), q(0.99), q(0.999),
		float64(late[len(late)-1].Nanoseconds())/1e3)
}
