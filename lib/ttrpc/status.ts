// Status codes are gRPC's (ttrpc reuses google.rpc.Status); errors carry one.

export const Code = {
  OK: 0, CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, ABORTED: 10, OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14, DATA_LOSS: 15, UNAUTHENTICATED: 16,
} as const;

export type CodeName = keyof typeof Code;

const NAMES = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k])) as Record<number, CodeName>;

export const codeName = (n: number): string => NAMES[n] ?? `code ${n}`;

/** A call's failure, as the peer sent it or as a handler throws it to be sent. */
export class TtrpcError extends Error {
  constructor(readonly status: number, message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = 'TtrpcError';
  }

  get code(): string {
    return codeName(this.status);
  }
}
