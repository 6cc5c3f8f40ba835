// Wake-up latency of a task that sleeps between requests, as a latency-critical service
// does: sleep until an absolute time 1 ms ahead, note how late the wake-up came. Prints
// the lateness in microseconds, one line per wake-up, for `seconds`.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
  long n = (argc > 1 ? atol(argv[1]) : 5) * 900;
  struct timespec due, now;
  for (long i = 0; i < n; i++) {
    clock_gettime(CLOCK_MONOTONIC, &due);
    due.tv_nsec += 1000000;
    if (due.tv_nsec >= 1000000000) { due.tv_sec++; due.tv_nsec -= 1000000000; }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("%ld\n", (now.tv_sec - due.tv_sec) * 1000000 + (now.tv_nsec - due.tv_nsec) / 1000);
  }
  return 0;
}
