// A sandbox's owner in a process of its own, for the cases that kill the owner (as lodgerd
// would be killed) in the middle of an operation: it takes the sandbox up, says "go",
// starts the operation and holds on, as a daemon does, until it is killed.
// node --import tsx bench/owner.ts RUN_DIR CGROUP_PARENT ID resize|suspend|restore
import { openRuntime } from '../sandbox-runtime/index.ts';

const [runDir, cgroupParent, id, op] = process.argv.slice(2) as [string, string, string, string];
const { runtime } = await openRuntime({ host: { runDir }, cgroupParent, bootTimeoutMs: 120_000 });
const sb = await runtime.attach(id);
process.stdout.write(`go ${sb.status().state}\n`);
const work = op === 'resize' ? sb.update({ vcpus: 2, memoryMiB: 768 }) : op === 'suspend' ? sb.suspend() : sb.resume();
await work.then(() => process.stdout.write('done\n'), (e: Error) => process.stdout.write(`failed ${e.message}\n`));
setInterval(() => {}, 1 << 30);
