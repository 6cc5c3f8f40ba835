// What a test run killed mid-way (an ava worker ended at its timeout) cannot stop itself:
// its sandboxes' processes and cgroups. Every test and benchmark names its cgroup parent
// `lodger-...-PID` after its own process; where that process is gone, the processes still
// in the parent's cgroups are killed by their pids (read from cgroup.procs) and the
// cgroups removed, before the next run starts. Nothing of a live run is touched.
import { existsSync, readdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const LEFTOVER = /^lodger-[a-z0-9-]*?-(\d+)(?:-d)?$/;

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

/** Directories under `dir` (itself included), deepest first. */
function tree(dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) out.push(...tree(join(dir, e.name)));
  out.push(dir);
  return out;
}

/** Removes the cgroups (and kills the processes) of lodger test runs whose process is gone; returns what it did. */
export async function sweepLeftovers(root = '/sys/fs/cgroup') {
  if (!existsSync(root)) return [];
  // v1: one hierarchy per controller directory; v2: the root is the hierarchy.
  const hierarchies = existsSync(join(root, 'cgroup.controllers')) ? [root]
    : readdirSync(root).map((d) => join(root, d)).filter((d) => { try { return statSync(d).isDirectory() && existsSync(join(d, 'cgroup.procs')); } catch { return false; } });
  // Parents are made below the creating process's own cgroup: the top level when run as root from a shell, else where we are.
  const own = new Map(readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n').map((l) => {
    const [, ctrls, path] = l.split(':');
    return [ctrls || '', path];
  }));
  const ownPath = (h) => {
    if (h === root) return own.get('') ?? '/';
    const base = h.slice(root.length + 1);
    for (const [ctrls, path] of own) if (ctrls.split(',').some((c) => c === base || c === `name=${base}`)) return path;
    return '/';
  };
  const done = [];
  for (const h of hierarchies) {
    for (const parent of new Set([h, join(h, ownPath(h).replace(/^\//, ''))])) {
      if (!existsSync(parent)) continue;
      done.push(...await sweepIn(parent));
    }
  }
  return done;
}

async function sweepIn(h) {
  const done = [];
  for (const name of readdirSync(h)) {
    const m = LEFTOVER.exec(name);
    if (!m || alive(Number(m[1]))) continue;
    const dirs = tree(join(h, name));
    let killed = 0;
    for (const d of dirs) {
      for (const line of readFileSync(join(d, 'cgroup.procs'), 'utf8').split('\n')) {
        const pid = Number(line);
        if (!(pid > 1)) continue;
        try { process.kill(pid, 'SIGKILL'); killed++; } catch { /* gone */ }
      }
    }
    let left = dirs.length;
    for (let i = 0; i < 100 && left; i++) {
      left = 0;
      for (const d of dirs) {
        if (!existsSync(d)) continue;
        try { rmdirSync(d); } catch { left++; }
      }
      if (left) await sleep(50);
    }
    done.push(`${join(h, name)}: ${killed} process(es) killed${left ? `, ${left} cgroup(s) still busy` : ''}`);
  }
  return done;
}
