// envd's process service (process.Process), as much of it as `nestbox sandbox exec` needs: Start
// (a stream of the command's events) and SendSignal. The Connect protocol with its JSON codec,
// as the e2b SDK speaks it (see src/agent/envd/ and the E2B protocol notes): a Start request is
// one enveloped JSON message, its answer enveloped messages up to an end-of-stream envelope; a
// unary call is plain JSON. Written against node:http instead of loading a client library: the
// e2b SDK (and the undici it loads) made each exec ~400 ms of module loading on a 2-core host,
// and @connectrpc/connect-node with the protobuf runtime 62 ms; exec runs once per CLI call.
import type { IncomingMessage } from 'node:http';
import { connectEnvelope, END_STREAM_FLAG } from '../http/connect-envelope.ts';
import { httpRequest, readBody } from './http-request.ts';

/** Where envd is reached: a base URL (the sandbox proxy) and the headers that route and authorize. */
export interface EnvdTarget {
  url: string;
  headers: Record<string, string>;
}

export interface ProcessSpec {
  cmd: string;
  args: string[];
  envs?: Record<string, string>;
  cwd?: string;
  /** The user to run as (envd's Basic authorization); envd's default user when absent. */
  user?: string;
}

export interface ProcessEnd {
  exitCode: number;
  /** envd's reason when the process did not exit normally (a signal, say). */
  error?: string;
}

/** An error envd (or the proxy in front of it) answered with. */
export class EnvdError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'EnvdError';
  }
}

/** Envelopes are at most this big (envd sends output in chunks of at most 32 KiB, base64'd). */
const MAX_ENVELOPE = 16 * 1024 * 1024;

function userHeader(user: string | undefined): Record<string, string> {
  return user ? { Authorization: `Basic ${Buffer.from(`${user}:`).toString('base64')}` } : {};
}

function post(target: EnvdTarget, method: string, headers: Record<string, string>, body: Buffer): Promise<IncomingMessage> {
  return httpRequest(new URL(`${target.url}/process.Process/${method}`), { method: 'POST', headers: { ...target.headers, ...headers }, body });
}

/** An answer that is not a stream: envd's Connect error ({code, message}), or the proxy's JSON. */
async function failure(res: IncomingMessage): Promise<EnvdError> {
  const text = (await readBody(res)).toString();
  let parsed: { code?: unknown; message?: unknown } = {};
  try {
    parsed = JSON.parse(text) as typeof parsed;
  } catch {
    // not JSON: the text itself says it
  }
  const message = typeof parsed.message === 'string' ? parsed.message : text.trim().split('\n')[0] || `HTTP ${res.statusCode}`;
  return new EnvdError(typeof parsed.code === 'string' ? parsed.code : String(res.statusCode), message);
}

interface StartedProcess {
  pid: number;
  /** Resolves when the process ended (its end event), rejects when the stream broke before. */
  ended: Promise<ProcessEnd>;
}

/**
 * Starts `spec` (no stdin) and streams its output to `onStdout` / `onStderr` as it comes;
 * resolves once envd named the process (its start event).
 */
export async function startProcess(
  target: EnvdTarget, spec: ProcessSpec, out: { onStdout(b: Buffer): void; onStderr(b: Buffer): void },
): Promise<StartedProcess> {
  const request = {
    process: { cmd: spec.cmd, args: spec.args, envs: spec.envs ?? {}, ...(spec.cwd ? { cwd: spec.cwd } : {}) },
    stdin: false,
  };
  const res = await post(target, 'Start', {
    'Content-Type': 'application/connect+json',
    'Connect-Protocol-Version': '1',
    'Keepalive-Ping-Interval': '50', // as the SDK asks: envd sends keepalives meanwhile
    ...userHeader(spec.user),
  }, connectEnvelope(request));
  if (res.statusCode !== 200) throw await failure(res);

  let started!: (pid: number) => void;
  let failed!: (e: Error) => void;
  const pid = new Promise<number>((resolve, reject) => ((started = resolve), (failed = reject)));
  const cutOff = 'the connection to the sandbox closed before the command ended (was the sandbox paused or killed?)';
  const ended = (async (): Promise<ProcessEnd> => {
    let buffered = Buffer.alloc(0);
    let end: ProcessEnd | undefined;
    const chunks = (async function* () {
      try {
        yield* res;
      } catch (e) {
        throw new EnvdError('unavailable', `${cutOff}: ${e instanceof Error ? e.message : String(e)}`);
      }
    })();
    for await (const chunk of chunks) {
      buffered = Buffer.concat([buffered, chunk as Buffer]);
      while (buffered.length >= 5) {
        const flags = buffered.readUInt8(0);
        const length = buffered.readUInt32BE(1);
        if (length > MAX_ENVELOPE) throw new EnvdError('internal', `envd sent a message of ${length} bytes`);
        if (buffered.length < 5 + length) break;
        const message = JSON.parse(buffered.subarray(5, 5 + length).toString()) as Record<string, any>;
        buffered = buffered.subarray(5 + length);
        if (flags & END_STREAM_FLAG) {
          const error = message.error as { code?: string; message?: string } | undefined;
          if (error) throw new EnvdError(error.code ?? 'unknown', error.message ?? 'envd ended the stream with an error');
          if (!end) throw new EnvdError('unavailable', 'the command ended without an exit status (was the sandbox paused or killed?)');
          return end;
        }
        const event = message.event as Record<string, any> | undefined;
        if (event?.start) started(Number(event.start.pid));
        else if (event?.data?.stdout !== undefined) out.onStdout(Buffer.from(event.data.stdout, 'base64'));
        else if (event?.data?.stderr !== undefined) out.onStderr(Buffer.from(event.data.stderr, 'base64'));
        else if (event?.end) end = { exitCode: Number(event.end.exitCode ?? 0), ...(event.end.error ? { error: String(event.end.error) } : {}) };
      }
    }
    throw new EnvdError('unavailable', cutOff);
  })();
  // An end (or a failure) before the start event: the start fails with it.
  ended.then(() => failed(new EnvdError('internal', 'envd ended the command without starting it')), (e: Error) => failed(e));
  return { pid: await pid, ended };
}

/** SendSignal: SIGKILL or SIGTERM to the process `pid`. */
export async function signalProcess(target: EnvdTarget, pid: number, signal: 'SIGKILL' | 'SIGTERM', user?: string): Promise<void> {
  const res = await post(target, 'SendSignal', {
    'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', ...userHeader(user),
  }, Buffer.from(JSON.stringify({ process: { pid }, signal: `SIGNAL_${signal}` })));
  if (res.statusCode !== 200) throw await failure(res);
  await readBody(res);
}
