// What the API commands share: their common options, the error contract (one line on stderr,
// exit 1, never a stack trace), JSON and table output, and a progress spinner on stderr.
import { InvalidArgumentError, type Command } from 'commander';
import Table from 'cli-table3';
import { resolveAdminConfig, type AdminOptionValues } from './admin-key.ts';
import { ApiClient, CliError, resolveConfig, type ApiConfig } from './api-client.ts';

export interface CommonOptions {
  apiUrl?: string;
  apiKey?: string;
  json?: boolean;
}

/** Adds --api-url, --api-key and --json to an API command. */
export function withApiOptions(cmd: Command): Command {
  return cmd
    .option('--api-url <url>', 'Nestbox API address (env E2B_API_URL; default http://127.0.0.1:3000)')
    .option('--api-key <key>', 'API key (env E2B_API_KEY or NESTBOX_API_KEY)')
    .option('--json', 'print the raw JSON answer, for scripts');
}

/** Adds --api-url, --admin-key and --json to an operator command. */
export function withAdminOptions(cmd: Command): Command {
  return cmd
    .option('--api-url <url>', 'Nestbox API address (env E2B_API_URL; default http://127.0.0.1:3000)')
    .option('--admin-key <key>', 'admin key (env NESTBOX_ADMIN_KEY; default: the admin-key file in the control directory)')
    .option('--json', 'print the raw JSON answer, for scripts');
}

export interface Context {
  client: ApiClient;
  json: boolean;
  /** Runs `fn` under a spinner on stderr (only on a terminal, never with --json). */
  progress<T>(text: string, fn: () => Promise<T>): Promise<T>;
}

export function contextFrom(opts: CommonOptions): Context {
  return contextWith(resolveConfig(opts), opts.json === true);
}

/** The context of an operator command: the admin key instead of a team's API key. */
export function adminContextFrom(opts: AdminOptionValues & { json?: boolean }): Context {
  return contextWith(resolveAdminConfig(opts), opts.json === true);
}

function contextWith(config: ApiConfig, json: boolean): Context {
  const client = new ApiClient(config);
  return {
    client,
    json,
    async progress(text, fn) {
      // Not on a terminal of unknown width either: ora would loop clearing "infinitely many" lines.
      if (json || !process.stderr.isTTY || !(process.stderr.columns > 0)) return fn();
      // Loaded here, not at start: the spinner's packages are most of what a CLI call would load.
      const { default: ora } = await import('ora');
      const spinner = ora({ text, stream: process.stderr, discardStdin: false }).start();
      try {
        const out = await fn();
        spinner.stop();
        return out;
      } catch (err) {
        spinner.stop();
        throw err;
      }
    },
  };
}

async function flushAndExit(code: number): Promise<never> {
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
  process.exit(code);
}

/**
 * Wraps a command's action: exit 0 when it resolves; on an error, one line on stderr and exit 1
 * (CliError's own code). The process exits at once (no idle HTTP connection keeps it alive).
 */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`error: ${message.split('\n')[0]}\n`);
      await flushAndExit(err instanceof CliError ? err.exitCode : 1);
    }
    await flushAndExit(0);
  };
}

export function printJson(value: unknown) {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function println(line = '') {
  process.stdout.write(`${line}\n`);
}

const plain = { head: [] as string[], border: [] as string[] };

/** A table with a header row. */
export function printTable(head: string[], rows: Array<Array<string | number>>) {
  const t = new Table({ head, style: plain });
  for (const r of rows) t.push(r.map(String));
  println(t.toString());
}

/** A two-column table of labels and values. */
export function printFields(fields: Array<[string, string | number]>) {
  const t = new Table({ style: plain });
  for (const [k, v] of fields) t.push({ [k]: String(v) });
  println(t.toString());
}

/** "2026-01-01T00:00:05.000Z" → "2026-01-01 00:00:05Z"; null/undefined → "-". */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  const d = new Date(iso);
  if (!Number.isFinite(d.getTime())) return iso;
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** 3723.5 → "1h 02m 03s"; 59.2 → "59s". */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m ${String(r).padStart(2, '0')}s`;
  if (m > 0) return `${m}m ${String(r).padStart(2, '0')}s`;
  return `${r}s`;
}

export function formatNumber(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

// --- argument parsers (commander's InvalidArgumentError gives "error: option '…' argument '…' is invalid. …") ---

export function intArg(min: number, max: number) {
  return (raw: string): number => {
    if (!/^\d+$/.test(raw.trim())) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    const n = Number(raw);
    if (n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}.`);
    return n;
  };
}

/** For repeatable `--x KEY=VALUE` options: collects into an object. */
export function keyValueArg(raw: string, previous: Record<string, string> | undefined): Record<string, string> {
  const i = raw.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError('expected KEY=VALUE.');
  return { ...(previous ?? {}), [raw.slice(0, i)]: raw.slice(i + 1) };
}
