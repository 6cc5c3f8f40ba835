// Parsing of sizes and counts given on the command line or in files.

const UNITS: Record<string, number> = {
  '': 1 / 1048576, b: 1 / 1048576,
  k: 1 / 1024, kb: 1 / 1024, ki: 1 / 1024, kib: 1 / 1024,
  m: 1, mb: 1, mi: 1, mib: 1,
  g: 1024, gb: 1024, gi: 1024, gib: 1024,
  t: 1048576, tb: 1048576, ti: 1048576, tib: 1048576,
};

/** "512M", "1Gi", "2GiB", "1048576" (bytes) -> MiB. Sizes are binary (M = MiB), as QEMU reads them. */
export function parseSizeMiB(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new RangeError(`not a size: ${JSON.stringify(text)} (use e.g. 512M, 2G, 1Gi)`);
  const mib = Number(m[1]) * unit;
  if (!Number.isInteger(mib)) throw new RangeError(`size ${text} is not a whole number of MiB`);
  return mib;
}

export function parsePositiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1) throw new RangeError(`${what} must be a positive integer (got ${JSON.stringify(text)})`);
  return n;
}
