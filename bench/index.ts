// Public door of what benches share with the suites and the demo: real services to
// measure (nginx, redis), the load generator, percentiles.
export * from './services.ts';
