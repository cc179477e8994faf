// `npm run bench [-- <name>] [--quick]`: one entry point for every benchmark. Each benchmark is a module
// loaded only when asked for, exporting `main(args)`; with no name the tunnel suite runs.
export interface BenchModule {
  /** args: the command line after the benchmark's name (flags such as --quick included). */
  main(args: string[]): Promise<void>;
}

/** Register a benchmark here: name -> lazy import of its module. */
const benchmarks: Record<string, () => Promise<BenchModule>> = {
  tunnel: () => import('./tunnel-suite.js'),
  'tunnel-profile': () => import('./tunnel-profile.js'),
  'http-concurrency': () => import('./tunnel-concurrency.js'),
  'cpu-profile-summary': () => import('./cpu-profile-summary.js'),
  mux: () => import('./mux.js'), // @porthole/mux vs raw ws (packages/mux proof helper)
};

const DEFAULT = 'tunnel';

async function dispatch(argv: string[]): Promise<void> {
  const [first, ...rest] = argv;
  if (first === '--help' || first === '-h') {
    process.stdout.write(
      `Usage: node bench/dist/run.js [name] [--quick] [--only CASE,...]\n  names: ${Object.keys(benchmarks).join(', ')} (default ${DEFAULT})\n`,
    );
    return;
  }
  const named = first !== undefined && !first.startsWith('-');
  const name = named ? first : DEFAULT;
  const load = benchmarks[name];
  if (!load) throw new Error(`unknown benchmark "${name}" (known: ${Object.keys(benchmarks).join(', ')})`);
  const bench = await load();
  await bench.main(named ? rest : argv);
}

dispatch(process.argv.slice(2)).then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
