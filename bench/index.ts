// Public door of what benches share with the suites and the demo: real services to
// measure (nginx, redis), the load generator, percentiles; a real lodgerd and a private
// containerd, started and stopped by pid; a sandbox's owner killed mid-operation.
export * from './services.ts';
export * from './containerd.ts';
export * from './lodgerd.ts';
export * from './tmp.ts';
export * from './owner-kill.ts';
