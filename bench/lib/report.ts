import { fmt, ratio } from './stats.ts';
import type { CountResult, LoadResult } from './types.ts';

/**
 * The bench report: Markdown (tables with ratios to `express-proxy` and `direct` of the same
 * run, the goals evaluated), JSON (everything measured) and an SVG chart drawn by hand
 * (two bar panels: steady keep-alive throughput and p99 per contender; no chart library needed
 * for a dozen bars).
 */

export interface RunInfo {
  date: string;
  startedAt: string;
  finishedAt: string;
  elapsedSeconds: number;
  machine: { cpu: string; cpus: number; memoryGiB: number; os: string; node: string };
  pinning: string;
  options: {
    connections: number;
    streamConnections: number;
    durationSeconds: number;
    rounds: number;
    steadyDurationSeconds: number;
    steadyRounds: number;
    quick: boolean;
  };
  contenders: Array<{ name: string; description: string }>;
  notes: string[];
}

export interface Goal {
  goal: string;
  measured: string;
  met: boolean | undefined;
}

export const SCENARIO_TITLES: Record<string, string> = {
  'steady-keepalive': 'Steady keep-alive',
  'no-keepalive': 'No keep-alive (a new TCP connection per request)',
  'upload-1mib': '1 MiB uploads (POST, streamed through)',
  'download-1mib': '1 MiB downloads (GET, streamed through)',
};

const byName = (results: LoadResult[], scenario: string, contender: string) =>
  results.find(
    (r) => r.scenario === scenario && r.contender === contender && r.note?.startsWith('skipped') !== true,
  );

/** The goals, from the steady keep-alive figures of this run. */
export function evaluateGoals(results: LoadResult[]): Goal[] {
  const s = 'steady-keepalive';
  const express = byName(results, s, 'express-proxy');
  const l1 = byName(results, s, 'pg-l1');
  const l2 = byName(results, s, 'pg-l2');
  const routes = byName(results, s, 'pg-l1-10k-routes');
  const goals: Goal[] = [];
  const r = (a?: LoadResult, b?: LoadResult) => ratio(a?.rps.median, b?.rps.median);
  const verdict = (x: number | undefined, min: number) => (x === undefined ? undefined : x >= min);
  const l1r = r(l1, express);
  goals.push({
    goal: 'L1-hit throughput ≥ 0.85× express-proxy',
    measured: `${fmt(l1r)}×`,
    met: verdict(l1r, 0.85),
  });
  const p99 = l1 && express ? l1.latencyMs.p99 - express.latencyMs.p99 : undefined;
  goals.push({
    goal: 'L1-hit p99 ≤ express-proxy p99 + 1 ms',
    measured:
      p99 === undefined
        ? '—'
        : `${fmt(l1?.latencyMs.p99)} ms vs ${fmt(express?.latencyMs.p99)} ms (${p99 >= 0 ? '+' : ''}${fmt(p99)} ms)`,
    met: p99 === undefined ? undefined : p99 <= 1,
  });
  const l2r = r(l2, express);
  goals.push({
    goal: 'L2-hit throughput ≥ 0.7× express-proxy',
    measured: `${fmt(l2r)}×`,
    met: verdict(l2r, 0.7),
  });
  const rr = r(routes, l1);
  goals.push({
    goal: '10 000 routes ≥ 0.9× the 1-route throughput',
    measured: `${fmt(rr)}×`,
    met: verdict(rr, 0.9),
  });
  return goals;
}

/** `- pg-l1: 0.91×` per gateway contender of the steady scenario, against express-proxy's CPU ÷ upstream. */
export function costLines(results: LoadResult[]): string[] {
  const express = byName(results, 'steady-keepalive', 'express-proxy')?.cpuPerUpstream;
  if (express === undefined) return [];
  return results
    .filter((r) => r.scenario === 'steady-keepalive' && r.contender !== 'express-proxy')
    .filter((r) => r.cpuPerUpstream !== undefined)
    .map((r) => `- \`${r.contender}\`: ${fmt(ratio(r.cpuPerUpstream, express))}×`);
}

const mark = (met: boolean | undefined) => (met === undefined ? 'n/a' : met ? 'met' : '**not met**');

/** Share of each cache level among the finished requests (those cut off by the end of a run apart). */
function cacheCell(levels?: Record<string, number>): string {
  if (levels === undefined) return '';
  const { 'cut-at-end': cut = 0, ...finished } = levels;
  const total = Object.values(finished).reduce((a, b) => a + b, 0);
  if (total === 0) return '';
  const shares = Object.entries(finished)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v === total ? '100' : ((100 * v) / total).toFixed(1)}%`)
    .join(', ');
  return cut > 0 ? `${shares} (${cut} cut at the end)` : shares;
}

function loadTable(results: LoadResult[], scenario: string): string {
  const rows = results.filter((r) => r.scenario === scenario);
  if (rows.length === 0) return '';
  const stream = rows.some((r) => r.mibPerSec !== undefined);
  const express = byName(results, scenario, 'express-proxy');
  const direct = byName(results, scenario, 'direct');
  const head = stream
    ? '| contender | MiB/s | min–max | req/s | p50 ms | p99 ms | p99.9 ms | × express-proxy | × direct | CPU µs/req | CPU ÷ upstream | errors |'
    : '| contender | req/s | min–max | p50 ms | p99 ms | p99.9 ms | × express-proxy | × direct | CPU µs/req | CPU ÷ upstream | errors | cache level |';
  const lines = [
    head,
    `|${head
      .split('|')
      .slice(1, -1)
      .map(() => '---')
      .join('|')}|`,
  ];
  for (const r of rows) {
    if (r.note?.startsWith('skipped') === true) {
      lines.push(`| ${r.contender} | ${r.note} |${' |'.repeat(stream ? 10 : 11)}`);
      continue;
    }
    const main = stream ? r.mibPerSec! : r.rps;
    const base = (b?: LoadResult) => fmt(ratio(main.median, stream ? b?.mibPerSec?.median : b?.rps.median));
    const cells = [
      r.contender,
      fmt(main.median),
      `${fmt(main.min)}–${fmt(main.max)}`,
      ...(stream ? [fmt(r.rps.median)] : []),
      fmt(r.latencyMs.p50),
      fmt(r.latencyMs.p99),
      fmt(r.latencyMs.p999),
      base(express),
      base(direct),
      r.cpuUsPerRequest === undefined ? '—' : fmt(r.cpuUsPerRequest),
      r.cpuPerUpstream === undefined ? '—' : fmt(r.cpuPerUpstream),
      r.errors === 0 ? '0' : `**${r.errors}**`,
      ...(stream ? [] : [cacheCell(r.cacheLevels)]),
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

function countTable(counts: CountResult[]): string {
  if (counts.length === 0) return '';
  const lines = ['| scenario | contender | figures | goal | verdict | note |', '|---|---|---|---|---|---|'];
  for (const c of counts) {
    const figures = Object.entries(c.figures)
      .map(([k, v]) => `${k}: ${Number.isInteger(v) ? v : fmt(v)}`)
      .join(', ');
    lines.push(
      `| ${c.scenario} | ${c.contender} | ${figures} | ${c.goal ?? ''} | ${mark(c.met)} | ${c.note ?? ''} |`,
    );
  }
  return lines.join('\n');
}

export function markdownReport(
  info: RunInfo,
  results: LoadResult[],
  counts: CountResult[],
  goals: Goal[],
): string {
  const o = info.options;
  const out: string[] = [];
  out.push(`# phantom-gateway bench — ${info.date}`, '');
  out.push(
    `Machine: ${info.machine.cpu}, ${info.machine.cpus} CPUs, ${info.machine.memoryGiB} GiB, ${info.machine.os}, Node ${info.machine.node}. ` +
      `${info.pinning}`,
    '',
    `Load: autocannon 9.0.0, ${o.connections} connections (streaming: ${o.streamConnections}); steady keep-alive ${o.steadyRounds} interleaved round(s) of ` +
      `${o.steadyDurationSeconds} s per contender, the other scenarios ${o.rounds} of ${o.durationSeconds} s ` +
      `(round 1: every contender once, then round 2…, each round starting one contender later); req/s is the median over the rounds ` +
      `with min–max as the spread; latency percentiles are the medians of each round's percentile over every 2xx response. ` +
      `Ratios compare medians of the same run. CPU ÷ upstream: the contender's CPU time per request over the upstream's ` +
      `in the same run (median of the rounds), a cost ratio the host's speed drift does not move. Run time ${Math.round(info.elapsedSeconds)} s${o.quick ? ' (--quick: smoke check, not a measurement)' : ''}.`,
    '',
  );
  for (const [scenario, title] of Object.entries(SCENARIO_TITLES)) {
    const table = loadTable(results, scenario);
    if (table === '') continue;
    out.push(`## ${title}`, '', table, '');
  }
  out.push('## Goals (issue 6)', '', '| goal | measured | verdict |', '|---|---|---|');
  for (const g of goals) out.push(`| ${g.goal} | ${g.measured} | ${mark(g.met)} |`);
  for (const c of counts.filter((x) => x.goal !== undefined)) {
    out.push(`| ${c.scenario} (${c.contender}): ${c.goal} | see below | ${mark(c.met)} |`);
  }
  out.push('');
  const costs = costLines(results);
  if (costs.length > 0) {
    out.push(
      '## CPU cost per request ÷ express-proxy’s (steady keep-alive, in upstream units)',
      '',
      'The same comparison as req/s, by CPU spent per request instead of requests per second: it holds when the ' +
        'host’s speed drifts between one contender’s slot and the next (below 1: cheaper than express-proxy).',
      '',
      ...costs,
      '',
    );
  }
  if (counts.length > 0) out.push('## Burst and flood', '', countTable(counts), '');
  out.push('## Contenders', '');
  for (const c of info.contenders) out.push(`- \`${c.name}\`: ${c.description}`);
  out.push('', '## Notes', '');
  for (const n of info.notes) out.push(`- ${n}`);
  out.push('');
  return out.join('\n');
}

/** The steady keep-alive table for the terminal (plain text, aligned). */
export function terminalTable(results: LoadResult[], scenario: string): string {
  const rows = results.filter((r) => r.scenario === scenario);
  const express = byName(results, scenario, 'express-proxy');
  const direct = byName(results, scenario, 'direct');
  const stream = rows.some((r) => r.mibPerSec !== undefined);
  const table = [
    [
      stream ? 'MiB/s' : 'req/s',
      'min–max',
      'p50 ms',
      'p99 ms',
      '×express',
      '×direct',
      'CPU µs/req',
      'CPU÷up',
      'errors',
    ],
  ];
  const names = ['contender'];
  for (const r of rows) {
    names.push(r.contender);
    if (r.note?.startsWith('skipped') === true) {
      table.push([r.note, '', '', '', '', '', '', '', '']);
      continue;
    }
    const m = stream ? r.mibPerSec! : r.rps;
    const base = (b?: LoadResult) => fmt(ratio(m.median, stream ? b?.mibPerSec?.median : b?.rps.median));
    table.push([
      fmt(m.median),
      `${fmt(m.min)}–${fmt(m.max)}`,
      fmt(r.latencyMs.p50),
      fmt(r.latencyMs.p99),
      base(express),
      base(direct),
      r.cpuUsPerRequest === undefined ? '—' : fmt(r.cpuUsPerRequest),
      r.cpuPerUpstream === undefined ? '—' : fmt(r.cpuPerUpstream),
      String(r.errors),
    ]);
  }
  const w0 = Math.max(...names.map((n) => n.length));
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length)));
  return table
    .map((row, i) => `${names[i]!.padEnd(w0)}  ${row.map((c, j) => c.padStart(widths[j]!)).join('  ')}`)
    .join('\n');
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Two horizontal bar panels (req/s and p99 ms per contender, steady keep-alive), plain SVG 1.1. */
export function svgChart(results: LoadResult[], title: string): string {
  const rows = results.filter(
    (r) => r.scenario === 'steady-keepalive' && r.note?.startsWith('skipped') !== true,
  );
  const labelW = 150;
  const panelW = 300;
  const gap = 90;
  const barH = 18;
  const rowH = 26;
  const top = 58;
  const width = labelW + panelW * 2 + gap + 70;
  const height = top + rows.length * rowH + 20;
  const maxRps = Math.max(1, ...rows.map((r) => r.rps.median));
  const maxP99 = Math.max(0.001, ...rows.map((r) => r.latencyMs.p99));
  const colour = (name: string) =>
    name.startsWith('pg-') ? '#2b6cb0' : name === 'nginx-authreq' ? '#2f855a' : '#718096';
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`,
    `<text x="${labelW}" y="${top - 10}" fill="#333">throughput, req/s (longer is better)</text>`,
    `<text x="${labelW + panelW + gap}" y="${top - 10}" fill="#333">p99 latency, ms (shorter is better)</text>`,
  ];
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const w1 = Math.max(1, (r.rps.median / maxRps) * panelW);
    const w2 = Math.max(1, (r.latencyMs.p99 / maxP99) * panelW);
    const x2 = labelW + panelW + gap;
    parts.push(
      `<text x="${labelW - 8}" y="${y + 13}" text-anchor="end">${esc(r.contender)}</text>`,
      `<rect x="${labelW}" y="${y}" width="${w1.toFixed(1)}" height="${barH}" fill="${colour(r.contender)}"/>`,
      `<text x="${(labelW + w1 + 4).toFixed(1)}" y="${y + 13}">${esc(fmt(r.rps.median))}</text>`,
      `<rect x="${x2}" y="${y}" width="${w2.toFixed(1)}" height="${barH}" fill="${colour(r.contender)}" fill-opacity="0.6"/>`,
      `<text x="${(x2 + w2 + 4).toFixed(1)}" y="${y + 13}">${esc(fmt(r.latencyMs.p99))}</text>`,
    );
  });
  parts.push('</svg>', '');
  return parts.join('\n');
}
