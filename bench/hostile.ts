// npm run bench:hostile -- [--json] [--runs N] [--kills N] [--flood-mib N]
// The long variants of test/hostile.test.ts, with the figures docs/RELIABILITY.md records:
// boot time and host overhead per sandbox with the jail off and on (interleaved, same run);
// a log flood of --flood-mib (default 1024) through the scheduler with the default 100 MiB
// log limit; QEMU killed --kills times each mid-resize, mid-suspend and mid-restore, with
// what was lost, what leaked and how long the error took to surface.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CONFIG_KEYS, JobStore, Scheduler } from '../daemon/index.ts';
import { openRuntime, type HostedRuntime, type HostedSandbox } from '../sandbox-runtime/index.ts';
import { passableTmpDir } from './tmp.ts';

const { values } = parseArgs({
  options: { json: { type: 'boolean', default: false }, runs: { type: 'string', default: '5' }, kills: { type: 'string', default: '10' }, 'flood-mib': { type: 'string', default: '1024' } },
});
const say = (m: string): void => { if (!values.json) console.error(m); };
const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)]! : NaN; };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const dir = passableTmpDir('lodger-hostile-');
const opened = await openRuntime({ host: { runDir: join(dir, 'run') }, cgroupParent: `lodger-hostile-${process.pid}` });
const jailed = opened.runtime;
const plain = jailed.with({ jail: null });
const started = new Set<HostedSandbox>();
const results: Record<string, unknown> = { accel: opened.accel.accel, jail: jailed.opts.jail ?? null };

async function boot(rt: HostedRuntime, id: string, extra: Record<string, unknown> = {}): Promise<HostedSandbox> {
  const sb = await rt.create({ id, vcpus: 1, maxVcpus: 2, memoryMiB: 256, maxMemoryMiB: 768, ...extra });
  started.add(sb);
  await sb.start();
  return sb;
}

/** VMMs from our run directory still running, and sandbox run directories left. */
function leaks(): { processes: number; runDirs: number } {
  const processes = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(dir); } catch { return false; }
  }).length;
  const runDirs = existsSync(join(dir, 'run')) ? readdirSync(join(dir, 'run')).length : 0;
  return { processes, runDirs };
}

try {
  // 1. Boot and overhead, jail off and on, interleaved.
  const boots: Record<'plain' | 'jailed', { bootMs: number[]; overheadMiB: number[]; pssOverheadMiB: number[] }> = {
    plain: { bootMs: [], overheadMiB: [], pssOverheadMiB: [] }, jailed: { bootMs: [], overheadMiB: [], pssOverheadMiB: [] },
  };
  for (let i = 0; i < Number(values.runs); i++) {
    for (const [name, rt] of [['plain', plain], ['jailed', jailed]] as const) {
      const sb = await boot(rt, `boot-${name}-${i}`);
      await sleep(1000);
      const m = (await sb.vmmMemory())!;
      boots[name].bootMs.push(sb.status().bootMs!);
      boots[name].overheadMiB.push((m.rssBytes - m.guestRamRssBytes) / 1048576);
      boots[name].pssOverheadMiB.push((m.pssBytes - m.guestRamPssBytes) / 1048576);
      await sb.stop({ graceMs: 1000 });
      say(`boot ${name} #${i}: ${sb.status().bootMs!.toFixed(0)} ms, overhead ${((m.rssBytes - m.guestRamRssBytes) / 1048576).toFixed(1)} MiB RSS`);
    }
  }
  results.boot = Object.fromEntries(Object.entries(boots).map(([k, v]) => [k, { runs: v.bootMs.length, bootMsMedian: Math.round(median(v.bootMs)), overheadMiBMedian: +median(v.overheadMiB).toFixed(1), pssOverheadMiBMedian: +median(v.pssOverheadMiB).toFixed(1) }]));

  // 2. Kills: mid-resize, mid-suspend, mid-restore.
  const kills = Number(values.kills);
  const killRows: Record<string, { runs: number; codes: Record<string, number>; surfacedMsMedian: number; lostJobs: number; leaks: { processes: number; runDirs: number } }> = {};
  for (const kind of ['resize', 'suspend', 'restore'] as const) {
    const codes: Record<string, number> = {};
    const surfaced: number[] = [];
    let lost = 0;
    for (let i = 0; i < kills; i++) {
      const sb = await boot(jailed, `kill-${kind}-${i}`, kind === 'resize' ? {} : { maxVcpus: 1, maxMemoryMiB: 256 });
      const job = await sb.exec({ argv: ['sh', '-c', 'sleep 3; echo done'] });
      job.wait().catch(() => {});
      let op: Promise<unknown>;
      if (kind === 'restore') {
        await sb.suspend();
        op = sb.resume();
        const t0 = Date.now();
        while (sb.status().state === 'resuming' && !existsSync(join(dir, 'run', sb.id, 's', 'qmp.sock')) && Date.now() - t0 < 5000) await sleep(5);
      } else {
        op = kind === 'resize' ? sb.update({ vcpus: 2, memoryMiB: 768 }) : sb.suspend();
      }
      await sleep(20 + Math.random() * 80);
      const pid = sb.pid;
      const kt = performance.now();
      if (pid && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`lodger-${sb.id},`)) process.kill(pid, 'SIGKILL');
      const code = await op.then(() => 'completed before the kill', (e: { code?: string }) => e.code ?? 'untyped');
      surfaced.push(performance.now() - kt);
      codes[code] = (codes[code] ?? 0) + 1;
      // A restore that failed keeps the saved state: the job must finish on a second resume.
      if (kind === 'restore' && sb.status().state === 'suspended') {
        await sb.resume();
        if ((await job.wait().catch(() => null))?.code !== 0) lost++;
      }
      await sb.stop({ graceMs: 0 });
      started.delete(sb);
    }
    killRows[kind] = { runs: kills, codes, surfacedMsMedian: Math.round(median(surfaced)), lostJobs: lost, leaks: leaks() };
    say(`QEMU killed mid-${kind} x${kills}: ${JSON.stringify(killRows[kind])}`);
  }
  results.kills = killRows;

  // 3. A log flood through the scheduler with the default limit.
  const floodMiB = Number(values['flood-mib']);
  const limit = CONFIG_KEYS.jobLogMaxBytes.default as number;
  const store = new JobStore(join(dir, 'flood.db'));
  const s = new Scheduler({ store, runtime: jailed, maxRunning: () => 1, logLimitBytes: limit });
  const rss0 = process.memoryUsage().rss;
  let rssPeak = rss0;
  const peak = setInterval(() => { rssPeak = Math.max(rssPeak, process.memoryUsage().rss); }, 200);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  store.submit('flood', { name: 'flood', command: ['sh', '-c', `head -c ${floodMiB * 1048576} /dev/zero`], env: {}, rootfs: '', outputDir: '', vcpus: { min: 1, max: 1 }, memoryMiB: { min: 256, max: 256 }, priority: 0, timeoutSeconds: 0, retries: 0 });
  s.start();
  const job = await s.waitFinal('flood');
  clearInterval(peak);
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await s.stop(true);
  const stored = store.logBytes('flood').reduce((a, b) => a + b, 0);
  results.flood = {
    mib: floodMiB, limitBytes: limit, storedBytes: stored, state: job.state, reason: job.transitions.at(-1)!.reason, seconds: +secs.toFixed(1),
    mibPerS: +(floodMiB / secs).toFixed(1), lodgerdCpuCores: +((cpu.user + cpu.system) / 1e6 / secs).toFixed(3), rssGrowthMiB: +((rssPeak - rss0) / 1048576).toFixed(0),
  };
  store.close();
  say(`log flood: ${JSON.stringify(results.flood)}`);
  results.leaks = leaks();
} finally {
  for (const sb of started) await sb.stop({ graceMs: 0 }).catch(() => {});
  await opened.cgroups?.removeParents();
}
console.log(JSON.stringify(results, null, 2));
