// PNG charts of a colocation run, drawn with Vega-Lite (specs) and resvg (SVG to PNG).
import { Resvg } from '@resvg/resvg-js';
import { writeFileSync } from 'node:fs';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export interface TimePoint { service: string; scenario: string; t: number; p99Ms: number | null; targetMs: number; vcpus: number }
export interface LoadPoint { service: string; scenario: string; loadPct: number; utilisation: number; p99Ratio: number }

async function png(spec: TopLevelSpec, file: string): Promise<void> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  writeFileSync(file, new Resvg(svg, { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' }, background: 'white' }).render().asPng());
}

/** Per service and scenario: p99 of each 1-s window with the target line, and batch vCPUs on the same time axis. */
export async function timeline(points: TimePoint[], file: string): Promise<void> {
  const spec = {
    data: { values: points },
    facet: { row: { field: 'service', type: 'nominal', title: null }, column: { field: 'scenario', type: 'nominal', title: null } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 330, height: 170,
      layer: [
        {
          layer: [
            { mark: { type: 'line', color: '#1f77b4', strokeWidth: 1.2 }, encoding: { y: { field: 'p99Ms', type: 'quantitative', title: 'p99 per 1-s window (ms)', scale: { type: 'symlog' } } } },
            { mark: { type: 'line', color: '#d62728', strokeDash: [4, 3] }, encoding: { y: { field: 'targetMs', type: 'quantitative' } } },
          ],
          encoding: { x: { field: 't', type: 'quantitative', title: 'seconds (loads 20, 40, 60, 80% in turn)' } },
        },
        {
          mark: { type: 'line', color: '#2ca02c', interpolate: 'step-after', opacity: 0.8 },
          encoding: {
            x: { field: 't', type: 'quantitative' },
            y: { field: 'vcpus', type: 'quantitative', title: 'batch vCPUs (green)', axis: { orient: 'right' }, scale: { domain: [0, 4] } },
          },
        },
      ],
      resolve: { scale: { y: 'independent' } },
    },
    title: 'Online p99 per 1-s window (blue), target (red dashes), batch vCPUs (green)',
  } as unknown as TopLevelSpec;
  await png(spec, file);
}

/** Per service: effective machine utilisation and p99 / solo p99 at each load, by scenario. */
export async function perLoad(points: LoadPoint[], file: string): Promise<void> {
  const panel = (field: string, title: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
    width: 300, height: 170,
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'loadPct', type: 'quantitative', title: 'online load (% of capacity)', scale: { domain: [10, 90] }, axis: { values: [20, 40, 60, 80] } },
      y: { field, type: 'quantitative', title, ...extra },
      color: { field: 'scenario', type: 'nominal', title: 'scenario' },
    },
  });
  const spec = {
    data: { values: points },
    facet: { row: { field: 'service', type: 'nominal', title: null } },
    spec: { hconcat: [panel('utilisation', 'effective utilisation (%)'), panel('p99Ratio', 'p99 / solo p99', { scale: { type: 'log' } })] },
    title: 'Effective machine utilisation and tail latency by load',
  } as unknown as TopLevelSpec;
  await png(spec, file);
}
