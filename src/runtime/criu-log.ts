import { copyFile, mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/** How many of CRIU's error lines an error carries (the first are the cause; the rest follow from it). */
const ERROR_LINES = 3;
/** How much of each: a line may carry a name the sandbox chose (a file, a process), of any length. */
const ERROR_LINE_CHARS = 300;

/**
 * After a failed dump or restore: CRIU's log outlives the sandbox directory (a copy in
 * `<dataDir>/logs`), and the error says what CRIU said, where runc's own message names only the
 * log's path in a directory that is about to go. Errors that are not CRIU's come back as they
 * were (a log left by an earlier dump of the same sandbox says nothing about them).
 */
export async function withCriuLog(e: unknown, o: { dataDir: string; criuWork: string; sandboxId: string; kind: 'dump' | 'restore' }): Promise<unknown> {
  const from = path.join(o.criuWork, `${o.kind}.log`);
  const dir = path.join(o.dataDir, 'logs');
  const kept = path.join(dir, `${o.sandboxId}-${o.kind}-${Date.now()}.log`);
  const copied = await mkdir(dir, { recursive: true }).then(() => copyFile(from, kept)).then(() => true, () => false);
  const message = e instanceof Error ? e.message : String(e);
  if (!copied || !/criu/i.test(message)) return e;
  const said = criuErrors(await readFile(kept, 'utf8').catch(() => ''));
  const plain = message.replace(/\s*log file: \S+/, '');
  const out = new Error(`${plain}${said.length ? `; CRIU: ${said.join(' / ')}` : ''} (its log: ${kept})`);
  if (e instanceof Error) out.stack = e.stack;
  return out;
}

/**
 * CRIU's error lines (`(00.012345) Error (criu/file.c:123): what`), the first few, without their
 * prefix; not the one it logs as an error at every restore of a sandbox and goes on from (it
 * may not raise its own file limit in the sandbox's user namespace).
 */
export function criuErrors(log: string): string[] {
  const out: string[] = [];
  for (const line of log.split('\n')) {
    const m = /\bError \([^)]*\):\s*(.*)$/.exec(line);
    if (m && m[1] && !m[1].startsWith('rlimit: ')) out.push(m[1].trim().slice(0, ERROR_LINE_CHARS));
    if (out.length === ERROR_LINES) break;
  }
  return out;
}
