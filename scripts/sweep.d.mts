export function sweepLeftovers(root?: string): Promise<string[]>;
