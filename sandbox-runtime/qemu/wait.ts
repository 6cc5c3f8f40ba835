// Small waiting helpers shared by the sandbox's steps.
import { SandboxError, type SandboxErrorCode } from '../errors.ts';

/** Whether `p` settles within `ms`. */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([p.then(() => true, () => true), new Promise<boolean>((res) => { timer = setTimeout(() => res(false), ms); })]);
  clearTimeout(timer);
  return r;
}

/** Polls `cond` every 5 ms; throws `code` after `timeoutMs`. */
export async function until(cond: () => Promise<boolean>, timeoutMs: number, what: string, code: SandboxErrorCode): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new SandboxError(code, `${what} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function tail(text: string, lines: number): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}
