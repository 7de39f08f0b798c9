// A template's start command: the process its sandboxes begin with (a Jupyter server, a dev
// server), started after the init and awaited through the template's ready command.
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { NestboxError } from '../core/errors.ts';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import type { InitClient } from './init/client.ts';
import type { ProcessStream } from './init/streams.ts';
import { imageUser, templateMetaPath } from './templates.ts';

/** What template.json says a sandbox starts with (startCmd / readyCmd are bash command strings). */
export interface TemplateStart {
  startCmd: string;
  readyCmd: string | null;
  env: Record<string, string>;
  cwd: string | undefined;
  user: string;
  /** Changes whenever template.json does: a warm capture of another version is not reused. */
  version: string;
}

export const READY_TIMEOUT_MS = Number(process.env.NESTBOX_TEMPLATE_READY_TIMEOUT_MS ?? 120_000);
const READY_POLL_MS = 200;
const OUTPUT_KEPT = 8192;

/** The start command of a template, or null when it has none (or no template.json). */
export async function templateStart(cfg: Pick<RuntimeConfig, 'templatesDir'>, name: string): Promise<TemplateStart | null> {
  if (!TEMPLATE_NAME_PATTERN.test(name)) return null;
  const text = await readFile(templateMetaPath(cfg, name), 'utf8').catch(() => null);
  if (text === null) return null;
  let meta: { startCmd?: unknown; readyCmd?: unknown; env?: unknown; workdir?: unknown; user?: unknown };
  try {
    meta = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof meta.startCmd !== 'string' || meta.startCmd.trim() === '') return null;
  const env = meta.env && typeof meta.env === 'object' ? (meta.env as Record<string, string>) : {};
  return {
    startCmd: meta.startCmd,
    readyCmd: typeof meta.readyCmd === 'string' && meta.readyCmd.trim() !== '' ? meta.readyCmd : null,
    env,
    cwd: typeof meta.workdir === 'string' && meta.workdir ? meta.workdir : undefined,
    user: typeof meta.user === 'string' ? (imageUser(meta.user) ?? 'user') : 'user',
    version: await templateVersion(cfg, name, text),
  };
}

/**
 * Changes when template.json or the template's files do (a template deleted and imported or
 * built again has a new rootfs directory): a capture of another version is never reused.
 */
async function templateVersion(cfg: Pick<RuntimeConfig, 'templatesDir'>, name: string, meta: string): Promise<string> {
  const st = await stat(path.join(cfg.templatesDir, name, 'rootfs')).catch(() => null);
  return createHash('sha256').update(meta).update(`\0${st?.ino ?? 0}:${st?.ctimeMs ?? 0}`).digest('hex').slice(0, 16);
}

/**
 * Starts the start command in a sandbox and waits until its ready command exits 0. Fails with
 * the start command's output when it exits with an error first, or when the ready command has
 * not succeeded within READY_TIMEOUT_MS. The start command keeps running after this returns.
 */
export async function startAndAwaitReady(init: InitClient, start: TemplateStart, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const base = { env: start.env, cwd: start.cwd ?? null, user: start.user };
  const proc = await init.start({ ...base, argv: ['/bin/bash', '-l', '-c', start.startCmd], tag: 'start-cmd' });
  const output = keepTail(proc);
  let exit: { exitCode: number | null; signal: number | null } | null = null;
  proc.exited.then((e) => (exit = e), () => undefined);
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const failedStart = exit as { exitCode: number | null; signal: number | null } | null;
      if (failedStart && failedStart.exitCode !== 0) {
        throw new NestboxError('invalid', `the template's start command exited with ${failedStart.exitCode ?? `signal ${failedStart.signal}`}: ${output()}`);
      }
      if (start.readyCmd === null) return;
      const check = await init.start({ ...base, argv: ['/bin/bash', '-l', '-c', start.readyCmd] });
      const r = await check.exited;
      if (r.exitCode === 0) return;
      if (Date.now() > deadline) {
        throw new NestboxError('invalid', `the template's ready command did not succeed within ${Math.round(timeoutMs / 1000)} s; start command output: ${output()}`);
      }
      await new Promise((res) => setTimeout(res, READY_POLL_MS));
    }
  } finally {
    proc.detach();
  }
}

/** Reads a process's output as it comes, keeping its last bytes for an error message. */
function keepTail(proc: ProcessStream): () => string {
  let kept = Buffer.alloc(0);
  proc.on('data', (c: { data: Buffer }) => {
    kept = Buffer.concat([kept, c.data]);
    if (kept.length > OUTPUT_KEPT) kept = kept.subarray(kept.length - OUTPUT_KEPT);
  });
  return () => kept.toString('utf8').trim() || '(no output)';
}
