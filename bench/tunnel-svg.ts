// A bar chart of every metric, written by hand as SVG (no dependency): one panel per metric, one bar per
// peer at its median with a whisker from min to max, each panel scaled to its own largest median.
import type { SuiteResult } from './tunnel-results.js';
import { formatFigure } from './tunnel-stats.js';

const WIDTH = 960;
const LABEL_WIDTH = 230;
const VALUE_WIDTH = 130;
const BAR_HEIGHT = 13;
const ROW_HEIGHT = 17;
const TITLE_HEIGHT = 24;
const PANEL_GAP = 10;
const COLOURS = ['#7f7f7f', '#8c564b', '#1f77b4', '#17becf', '#d62728', '#ff7f0e', '#9467bd', '#e377c2'];

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function renderChart(r: SuiteResult): string {
  const colour = new Map(r.peers.map((p, i) => [p.id, COLOURS[i % COLOURS.length]!]));
  const barSpace = WIDTH - LABEL_WIDTH - VALUE_WIDTH;
  const parts: string[] = [];
  let y = 40;
  parts.push(
    `<text x="10" y="24" font-size="16" font-weight="bold">${escapeXml(`porthole tunnel bench ${r.startedAt} (${r.mode}, ${r.roundsRun} rounds): median, whisker min–max`)}</text>`,
  );
  for (const c of r.cases) {
    for (const m of c.metrics) {
      const figures = r.figures[m.id] ?? {};
      const peers = r.peers.filter((p) => figures[p.id]);
      if (peers.length === 0) continue;
      // Scaled to the largest median (plus room for whiskers); a whisker beyond the panel is clipped.
      const top = 1.2 * Math.max(...peers.map((p) => figures[p.id]!.median)) || 1;
      const scale = (v: number) => Math.min(barSpace, (v / top) * barSpace);
      parts.push(
        `<text x="10" y="${y + 16}" font-size="13" font-weight="bold">${escapeXml(`${m.title} (${m.unit}, ${m.higherIsBetter ? 'higher' : 'lower'} is better)`)}</text>`,
      );
      y += TITLE_HEIGHT;
      for (const p of peers) {
        const f = figures[p.id]!;
        const mid = y + BAR_HEIGHT / 2;
        parts.push(
          `<text x="${LABEL_WIDTH - 8}" y="${mid + 4}" font-size="11" text-anchor="end">${escapeXml(p.label)}</text>`,
          `<rect x="${LABEL_WIDTH}" y="${y}" width="${scale(f.median).toFixed(1)}" height="${BAR_HEIGHT}" fill="${colour.get(p.id)}"/>`,
          `<line x1="${(LABEL_WIDTH + scale(f.min)).toFixed(1)}" x2="${(LABEL_WIDTH + scale(f.max)).toFixed(1)}" y1="${mid}" y2="${mid}" stroke="#000" stroke-width="1"/>`,
          `<text x="${LABEL_WIDTH + barSpace + 6}" y="${mid + 4}" font-size="11">${escapeXml(formatFigure(f.median))}</text>`,
        );
        y += ROW_HEIGHT;
      }
      y += PANEL_GAP;
    }
  }
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y + 10}" viewBox="0 0 ${WIDTH} ${y + 10}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
