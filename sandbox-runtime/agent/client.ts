// Host end of the agent channel: a unix socket that QEMU bridges to the guest's
// virtio-serial port. Turns frames into promises and output streams.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { SandboxError } from '../errors.ts';
import {
  decodeError, decodeExit, guestText, decodeOutput, decodeStats, encodeAck, encodeExec, encodeFrame, encodeU32, FrameDecoder, FrameType,
  type ExecRequest, type ExitStatus, type Frame, type GuestStats,
} from './protocol.ts';

const STALE_MS = 500;

type OutputCb = (b: Buffer) => void;

export class AgentExec {
  private readonly held: [Buffer[], Buffer[]] = [[], []];
  private readonly cbs: [OutputCb | null, OutputCb | null] = [null, null];
  /** Bytes of stdout and stderr received so far, and of those handed to a listener. */
  readonly received: [number, number];
  private readonly delivered: [number, number];
  private exitSeen = false;
  private ackQueued = false;
  private settle!: { resolve: (s: ExitStatus) => void; reject: (e: Error) => void };
  readonly done: Promise<ExitStatus>;
  guestPid: number | null = null;

  /** `offsets`: output already stored by an earlier host, when one resumes a running exec. */
  constructor(readonly id: number, private readonly client: AgentClient, offsets: [number, number] = [0, 0]) {
    this.received = [...offsets];
    this.delivered = [...offsets];
    this.done = new Promise((resolve, reject) => { this.settle = { resolve, reject }; });
    this.done.catch(() => {}); // observed through wait(); don't crash on unobserved rejection
  }

  /** Output that arrives before a listener is attached is held, not lost. */
  onStdout(cb: OutputCb): void {
    this.listen(0, cb);
  }

  onStderr(cb: OutputCb): void {
    this.listen(1, cb);
  }

  private listen(k: 0 | 1, cb: OutputCb): void {
    this.cbs[k] = cb;
    for (const b of this.held[k].splice(0)) this.deliver(k, b);
    this.queueAck();
  }

  private deliver(k: 0 | 1, b: Buffer): void {
    const cb = this.cbs[k];
    if (!cb) return void this.held[k].push(b);
    cb(b);
    this.delivered[k] += b.length;
  }

  // The guest holds output until it is acknowledged, so that a host that dies and comes
  // back can ask for it again. Acknowledge after the listeners (which store it) ran.
  private queueAck(): void {
    if (this.ackQueued) return;
    this.ackQueued = true;
    setImmediate(() => {
      this.ackQueued = false;
      this.client.send(FrameType.Ack, this.id, encodeAck(this.delivered[0], this.delivered[1], this.exitSeen)).catch(() => {});
    });
  }

  signal(signo: number): Promise<void> {
    return this.client.send(FrameType.Signal, this.id, encodeU32(signo));
  }

  wait(): Promise<ExitStatus> {
    return this.done;
  }

  /** @internal Asks the guest for everything after what was received (after a reconnect). */
  replay(): Promise<void> {
    return this.client.send(FrameType.Replay, this.id, encodeAck(this.received[0], this.received[1], false));
  }

  /** @internal */
  feed(f: Frame): void {
    if (f.type === FrameType.Stdout || f.type === FrameType.Stderr) {
      const k = f.type === FrameType.Stdout ? 0 : 1;
      let out: { offset: number; data: Buffer };
      try { out = decodeOutput(f.payload); } catch { return; }
      const end = out.offset + out.data.length;
      // A repeat (sent again on a replay) or a gap (a replay will fill it): drop.
      if (out.offset > this.received[k] || end <= this.received[k]) return;
      const skip = this.received[k] - out.offset;
      this.received[k] = end;
      this.deliver(k, out.data.subarray(skip));
      this.queueAck();
    } else if (f.type === FrameType.Started) {
      this.guestPid = f.payload.length >= 4 ? f.payload.readUInt32LE(0) : null;
    } else if (f.type === FrameType.Exit) {
      // A malformed exit frame (a lying guest) fails the command; it must not throw out of the socket's data handler.
      try {
        const status = decodeExit(f.payload);
        this.exitSeen = true;
        this.settle.resolve(status);
        this.queueAck();
      } catch (e) {
        this.settle.reject(new SandboxError('SANDBOX_AGENT_ERROR', `guest agent sent a malformed exit status: ${(e as Error).message}`));
      }
    } else if (f.type === FrameType.Error) {
      const e = f.payload.length >= 4 ? decodeError(f.payload) : { errno: 0, message: 'malformed error frame' };
      this.settle.reject(new SandboxError('SANDBOX_AGENT_ERROR', `guest agent: ${e.message} (errno ${e.errno})`));
    }
  }

  /** @internal */
  fail(e: Error): void {
    this.settle.reject(e);
  }
}

interface Waiter {
  types: FrameType[];
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class AgentClient extends EventEmitter {
  private sock: net.Socket | null = null;
  private readonly decoder = new FrameDecoder();
  private staleTimer: NodeJS.Timeout | null = null;
  private nextId = 1;
  private readonly execs = new Map<number, AgentExec>();
  private readonly waiters = new Map<number, Waiter>();
  private failure: Error | null = null;
  /** Latest guest report, from a heartbeat or an answer. */
  stats: GuestStats | null = null;
  statsAt = 0;
  ready = false;
  /** The agent's hello: version and guest uptimes (ms) at its boot phases. */
  hello: string | null = null;

  /**
   * Decides what a closed channel means. The VMM's death closes the socket before the
   * process exit is seen, so the owner can wait for that and return the truer error.
   */
  onChannelClose: () => Promise<Error> = async () => new SandboxError('SANDBOX_AGENT_ERROR', 'agent channel closed');

  constructor(private readonly path: string) {
    super();
  }

  async connect(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await new Promise<void>((resolve, reject) => {
          const s = net.connect(this.path);
          s.once('connect', () => { this.attach(s); resolve(); });
          s.once('error', reject);
        });
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new SandboxError('SANDBOX_BOOT_FAILED', `agent socket ${this.path} did not accept a connection`, { cause: e });
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  private attach(s: net.Socket): void {
    this.sock = s;
    s.on('data', (chunk: Buffer) => {
      this.dispatchAll(this.decoder.push(chunk));
      this.armStale();
    });
    s.on('error', () => {});
    s.on('close', () => {
      if (this.sock !== s) return; // a socket we let go of on purpose
      void this.onChannelClose().then((e) => this.fail(e));
    });
  }

  /** Lets go of the channel without failing what is in flight (the VMM is about to go away and come back). */
  detach(): void {
    const s = this.sock;
    this.sock = null;
    this.ready = false;
    s?.destroy();
  }

  /** Connects again (a new VMM serving the same guest) and waits for the agent to answer. */
  async reconnect(timeoutMs: number): Promise<void> {
    this.detach();
    this.decoder.reset();
    await this.connect(timeoutMs);
    await this.waitReady(timeoutMs);
    // Output sent while nobody listened is sent again; repeats are dropped by offset.
    await Promise.all([...this.execs.values()].map((x) => x.replay()));
  }

  /**
   * Takes up an exec that an earlier host started (the daemon restarted): output after
   * `offsets` (bytes of stdout and stderr already stored) and the exit status come here.
   */
  async resumeExec(id: number, offsets: [number, number]): Promise<AgentExec> {
    if (this.failure) throw this.failure;
    const x = new AgentExec(id, this, offsets);
    this.execs.set(id, x);
    if (id >= this.nextId) this.nextId = id + 1;
    if (this.sock && this.ready) await x.replay();
    return x;
  }

  // A frame left half-sent (the guest crashed mid-write) must not block later frames.
  private armStale(): void {
    if (this.staleTimer) clearTimeout(this.staleTimer);
    this.staleTimer = null;
    if (this.decoder.pending === 0) return;
    this.staleTimer = setTimeout(() => {
      this.dispatchAll(this.decoder.expireStale());
      this.armStale();
    }, STALE_MS);
    this.staleTimer.unref();
  }

  private dispatchAll(frames: Frame[]): void {
    for (const f of frames) this.dispatch(f);
  }

  private dispatch(f: Frame): void {
    if (f.type === FrameType.Stats) {
      try {
        this.stats = decodeStats(f.payload);
        this.statsAt = Date.now();
        this.emit('stats', this.stats);
      } catch { /* a short stats frame is ignored */ }
    }
    if (f.type === FrameType.Hello) this.hello = guestText(f.payload, 256);
    if (f.type === FrameType.Hello || f.type === FrameType.Pong) {
      if (!this.ready) {
        this.ready = true;
        this.emit('ready');
      }
    }
    const exec = this.execs.get(f.id);
    if (exec && [FrameType.Stdout, FrameType.Stderr, FrameType.Started, FrameType.Exit, FrameType.Error].includes(f.type)) {
      exec.feed(f);
      if (f.type === FrameType.Exit || f.type === FrameType.Error) this.execs.delete(f.id);
      return;
    }
    const w = this.waiters.get(f.id);
    if (w && (w.types.includes(f.type) || f.type === FrameType.Error)) {
      this.waiters.delete(f.id);
      clearTimeout(w.timer);
      if (f.type === FrameType.Error) {
        const e = f.payload.length >= 4 ? decodeError(f.payload) : { errno: 0, message: 'malformed error frame' };
        w.reject(new SandboxError('SANDBOX_AGENT_ERROR', `guest agent: ${e.message} (errno ${e.errno})`));
      } else {
        w.resolve(f);
      }
    }
  }

  /** Stops everything in flight with `e` (the VMM died, or we closed). */
  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    for (const x of this.execs.values()) x.fail(e);
    this.execs.clear();
    for (const w of this.waiters.values()) {
      clearTimeout(w.timer);
      w.reject(e);
    }
    this.waiters.clear();
    if (this.staleTimer) clearTimeout(this.staleTimer);
    this.emit('failed', e);
  }

  send(type: FrameType, id: number, payload?: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (!this.sock) return Promise.reject(new SandboxError('SANDBOX_AGENT_ERROR', 'agent not connected'));
    const s = this.sock;
    return new Promise((resolve, reject) => s.write(encodeFrame(type, id, payload), (e?: Error | null) => (e ? reject(e) : resolve())));
  }

  /** Raw bytes onto the channel (tests feed the agent garbage this way). */
  sendRaw(bytes: Buffer): void {
    this.sock?.write(bytes);
  }

  private request(type: FrameType, answer: FrameType[], payload: Buffer | undefined, timeoutMs: number): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.allocId();
    const p = new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new SandboxError('SANDBOX_AGENT_ERROR', `guest agent did not answer ${FrameType[type]} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(id, { types: answer, resolve, reject, timer });
    });
    this.send(type, id, payload).catch(() => {});
    return p;
  }

  private allocId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 0x7fffffff ? 1 : this.nextId + 1;
    return id;
  }

  /** Resolves once the agent said hello (fresh boot) or answered a ping (reattach). */
  waitReady(timeoutMs: number): Promise<void> {
    if (this.ready) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      // Pings cover the case where the hello was sent before we connected.
      const ping = setInterval(() => { this.send(FrameType.Ping, 0).catch(() => {}); }, 250);
      const timer = setTimeout(() => { cleanup(); reject(new SandboxError('SANDBOX_BOOT_TIMEOUT', `guest agent not ready within ${timeoutMs} ms`)); }, timeoutMs);
      const onReady = (): void => { cleanup(); resolve(); };
      const onFail = (e: Error): void => { cleanup(); reject(e); };
      const cleanup = (): void => {
        clearInterval(ping);
        clearTimeout(timer);
        this.off('ready', onReady);
        this.off('failed', onFail);
      };
      this.on('ready', onReady);
      this.on('failed', onFail);
    });
  }

  async exec(req: ExecRequest): Promise<AgentExec> {
    if (this.failure) throw this.failure;
    const id = this.allocId();
    const x = new AgentExec(id, this);
    this.execs.set(id, x);
    await this.send(FrameType.Exec, id, encodeExec(req));
    return x;
  }

  async requestStats(timeoutMs = 5000): Promise<GuestStats> {
    const f = await this.request(FrameType.StatsRequest, [FrameType.Stats], undefined, timeoutMs);
    return decodeStats(f.payload);
  }

  /** Asks the guest to online every offline CPU and memory block; answers with fresh stats. */
  async online(timeoutMs = 5000): Promise<GuestStats> {
    const f = await this.request(FrameType.Online, [FrameType.Stats], undefined, timeoutMs);
    return decodeStats(f.payload);
  }

  /** Asks the guest to keep exactly `n` CPUs online; answers with fresh stats. */
  async setCpus(n: number, timeoutMs = 10_000): Promise<GuestStats> {
    const f = await this.request(FrameType.SetCpus, [FrameType.Stats], encodeU32(n), timeoutMs);
    return decodeStats(f.payload);
  }

  async sync(timeoutMs = 30_000): Promise<void> {
    await this.request(FrameType.Sync, [FrameType.SyncDone], undefined, timeoutMs);
  }

  async ping(timeoutMs = 5000): Promise<number> {
    const t0 = performance.now();
    await this.request(FrameType.Ping, [FrameType.Pong], undefined, timeoutMs);
    return performance.now() - t0;
  }

  /** Polls until `pred` holds for a fresh guest report (pushed on CPU/memory events, or asked for). */
  async waitStats(pred: (s: GuestStats) => boolean, timeoutMs: number, pollMs = 20): Promise<GuestStats> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.online(Math.max(1000, deadline - Date.now()));
      if (pred(s)) return s;
      if (Date.now() > deadline) {
        throw new SandboxError('SANDBOX_AGENT_ERROR', `guest did not reach the expected state within ${timeoutMs} ms (cpus ${s.cpusOnline}, MemTotal ${Math.round(s.memTotalKiB / 1024)} MiB)`);
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  shutdown(): Promise<void> {
    return this.send(FrameType.Shutdown, 0);
  }

  close(): void {
    this.fail(new SandboxError('SANDBOX_AGENT_ERROR', 'agent channel closed by host'));
    this.sock?.destroy();
  }
}
