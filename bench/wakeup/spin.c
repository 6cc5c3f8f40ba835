// A CPU-bound batch thread: it never sleeps.
int main(void) { volatile unsigned long x = 0; for (;;) x++; }
