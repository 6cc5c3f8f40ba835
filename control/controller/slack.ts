// Slack: how far a service's measured latency is from its target, as a fraction of the
// target. The one place this formula lives (the controller, metrics and the API use it).
import type { OnlineServicePolicy } from '../policy/index.ts';

/** (target - measured) / target: 1 = idle, 0 = at the target, below 0 = in violation. */
export function slack(targetMs: number, measuredMs: number): number {
  return (targetMs - measuredMs) / targetMs;
}

export interface SlackReading {
  /** Per service, null when its latency is unknown. */
  perService: Record<string, number | null>;
  /** The smallest known slack (Infinity when none is known). */
  min: number;
  /** The service with the smallest slack, described for reasons. */
  worst: string;
  /** Services without a usable latency, with the reason. */
  unknown: string[];
}

export function serviceSlacks(
  services: OnlineServicePolicy[],
  observed: { name: string; latencyMs: number | null; error: string | null }[],
): SlackReading {
  const r: SlackReading = { perService: {}, min: Infinity, worst: '', unknown: [] };
  for (const svc of services) {
    const o = observed.find((x) => x.name === svc.name);
    if (!o || o.latencyMs === null || o.error) {
      r.perService[svc.name] = null;
      r.unknown.push(`${svc.name}${o?.error ? ` (${o.error})` : ''}`);
      continue;
    }
    const s = slack(svc.slo.targetMs, o.latencyMs);
    r.perService[svc.name] = s;
    if (s < r.min) {
      r.min = s;
      r.worst = `${svc.name} p${svc.slo.percentile} ${o.latencyMs.toFixed(2)} ms vs ${+svc.slo.targetMs.toFixed(3)} ms`;
    }
  }
  return r;
}
