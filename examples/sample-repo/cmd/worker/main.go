// Command worker pulls jobs from a queue and runs them.
package main

import (
	"fmt"
	"time"
)

type Job struct {
	ID       int
	Priority int
}

// Worker runs jobs from a channel until it is closed.
func Worker(id int, jobs <-chan Job, done chan<- int) {
	for job := range jobs {
		time.Sleep(10 * time.Millisecond)
		done <- job.ID
	}
}

func main() {
	jobs := make(chan Job, 10)
	done := make(chan int, 10)
	go Worker(1, jobs, done)
	jobs <- Job{ID: 1, Priority: 5}
	close(jobs)
	fmt.Println("finished job", <-done)
}
