// Public door of the daemon: the Lodgerd class and its parts, for benches, the demo and
// tools. The `lodgerd` process is main.ts, the `lodger` CLI cli/main.ts.
export { endLeftSandboxes, Lodgerd, LodgerdError, lockStateDir, type LodgerdOptions, type OpenedRuntime } from './lodgerd.ts';
export { CONFIG_KEYS, ConfigError, defaultConfigPath, loadConfig, type LodgerdConfig } from './config.ts';
export { DEFAULT_POOL } from './default-pool.ts';
export { WarmPool, POOL_BASE_MEMORY_MIB } from './pool.ts';
export { Scheduler, type JobEvent, type JobStartEvent } from './scheduler.ts';
export { JobStore, StoreError, FINAL_STATES, JOB_STATES, type JobRecord, type JobSpec, type JobState } from './store.ts';
export * from './cli/index.ts';
// The API's request validation, for suites that fuzz it.
export { InvalidRequest, toJobSpec } from './api.ts';
