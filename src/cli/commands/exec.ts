// nestbox sandbox exec | shell: run commands in a sandbox, through its envd (the sandbox proxy,
// E2B_SANDBOX_URL). exec speaks to envd itself (../envd-process.ts), so that a call starts in
// about the time of `nestbox --help`; shell and the files commands use the official `e2b` SDK,
// loaded on demand.
import type { Command } from 'commander';
import type { Sandbox } from 'e2b';
import { ENVD_PORT } from '../../control-plane/proxy/routing.ts';
import { ApiRequestError, CliError, NETWORK_ERROR_CODES, seg } from '../api-client.ts';
import { EnvdError, signalProcess, startProcess, type EnvdTarget } from '../envd-process.ts';
import { action, contextFrom, keyValueArg, printJson, withApiOptions, type CommonOptions, type Context } from '../output.ts';

export const DEFAULT_SANDBOX_URL = 'http://127.0.0.1:3002';

export interface EnvdOptions extends CommonOptions {
  sandboxUrl?: string;
}

/** Adds --api-url, --api-key, --json and --sandbox-url to a command that talks to envd. */
export function withEnvdOptions(cmd: Command): Command {
  return withApiOptions(cmd).option(
    '--sandbox-url <url>',
    `Nestbox sandbox proxy address (env E2B_SANDBOX_URL; default ${DEFAULT_SANDBOX_URL})`,
  );
}

/** Flag, then E2B_SANDBOX_URL; with E2B_DOMAIN set and neither, the SDK derives it from the domain. */
function resolveSandboxUrl(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const url = flag || env.E2B_SANDBOX_URL || (env.E2B_DOMAIN ? undefined : DEFAULT_SANDBOX_URL);
  if (url === undefined) return undefined;
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error();
  } catch {
    throw new CliError(`invalid sandbox URL "${url}": expected e.g. ${DEFAULT_SANDBOX_URL}`);
  }
  return url.replace(/\/+$/, '');
}

let proxyInUse: string | undefined;

/** "fetch failed" from an envd call: say which address could not be reached. */
export function explainEnvdError(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof CliError) return err;
  if (!/fetch failed/.test(err.message) && !NETWORK_ERROR_CODES.some((c) => err.message.includes(c) || (err as NodeJS.ErrnoException).code === c)) return err;
  return new CliError(
    `cannot reach the sandbox proxy at ${proxyInUse ?? '(derived from E2B_DOMAIN)'} (see E2B_SANDBOX_URL or --sandbox-url): ${err.message}`,
  );
}

/** output.ts's action(), with envd's network errors explained. */
export function envdAction<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return action(async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      throw explainEnvdError(err);
    }
  });
}

/** The API's refusal of a connect, said for the CLI; undefined for any other status. */
function connectRefused(id: string, status: number, message: string): CliError | undefined {
  if (status === 404) return new CliError(`sandbox ${id} not found`);
  if (status === 401) return new CliError(`the API key was refused: ${message}`);
  return undefined;
}

/** Connects to a sandbox through the SDK (a paused one is resumed, as the SDK's connect does). */
export async function connectSandbox(id: string, opts: EnvdOptions): Promise<{ ctx: Context; sbx: Sandbox }> {
  const ctx = contextFrom(opts);
  const sandboxUrl = resolveSandboxUrl(opts.sandboxUrl);
  proxyInUse = sandboxUrl;
  const e2b = await import('e2b');
  try {
    const sbx = await e2b.Sandbox.connect(id, {
      apiUrl: ctx.client.config.apiUrl,
      apiKey: ctx.client.config.apiKey,
      ...(sandboxUrl ? { sandboxUrl } : {}),
    });
    return { ctx, sbx };
  } catch (err) {
    if (err instanceof e2b.SandboxNotFoundError) throw connectRefused(id, 404, err.message);
    if (err instanceof e2b.AuthenticationError) throw connectRefused(id, 401, err.message);
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    if (err instanceof TypeError && cause) {
      throw new CliError(`cannot reach the Nestbox API at ${ctx.client.config.apiUrl}: ${cause.code ?? cause.message}`);
    }
    throw err;
  }
}

async function flush(): Promise<void> {
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
}

/** Exits with `code` once stdout and stderr are written (a command's exit code, not action()'s 0). */
async function exitWith(code: number): Promise<never> {
  await flush();
  process.exit(code >= 0 && code <= 255 ? code : 1);
}

/** The exit code in a CommandExitError, or rethrows anything else. */
async function exitCodeOf(err: unknown): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const { CommandExitError } = await import('e2b');
  if (err instanceof CommandExitError) return { exitCode: err.exitCode, stdout: err.stdout, stderr: err.stderr };
  throw err;
}

interface ExecOptions extends EnvdOptions {
  user?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** A command string for the login shell (`bash -l -c`), instead of an argv. */
  shell?: string;
}

/** What POST /v2/sandboxes/{id}/connect answers that envd needs (the SDK's connect reads the same). */
interface ConnectAnswer {
  sandboxID: string;
  domain?: string | null;
  envdAccessToken?: string | null;
}

/**
 * Connects to a sandbox as the SDK's connect does (a paused one is resumed) and says where its
 * envd is: the sandbox proxy, or https://<envd port>-<id>.<domain> when only E2B_DOMAIN is set.
 */
async function envdOf(id: string, opts: EnvdOptions): Promise<{ ctx: Context; target: EnvdTarget }> {
  const ctx = contextFrom(opts);
  const sandboxUrl = resolveSandboxUrl(opts.sandboxUrl);
  proxyInUse = sandboxUrl;
  let answer: ConnectAnswer;
  try {
    answer = (await ctx.client.post<ConnectAnswer>(`/v2/sandboxes/${seg(id)}/connect`, {})).body;
  } catch (err) {
    throw (err instanceof ApiRequestError && connectRefused(id, err.status, err.apiMessage)) || err;
  }
  const url = sandboxUrl ?? `https://${ENVD_PORT}-${answer.sandboxID}.${answer.domain || process.env.E2B_DOMAIN}`;
  const headers: Record<string, string> = { 'E2b-Sandbox-Id': answer.sandboxID, 'E2b-Sandbox-Port': String(ENVD_PORT) };
  if (answer.envdAccessToken) headers['X-Access-Token'] = answer.envdAccessToken;
  return { ctx, target: { url, headers } };
}

async function exec(id: string, argv: string[], opts: ExecOptions): Promise<void> {
  if (opts.shell !== undefined && argv.length > 0) {
    throw new CliError('give either a command string with --shell (-c) or a command and its arguments after --, not both');
  }
  if (opts.shell === undefined && argv.length === 0) throw new CliError('no command: give one after -- (or a string with --shell)');
  // Ctrl-C (or a TERM) ends the remote command too, then exits as a shell would. One that comes
  // while the start is asked for waits for envd to name the process: it may run already.
  let interrupted = false;
  let starting: Promise<{ pid: number } | undefined> | undefined;
  let target: EnvdTarget | undefined;
  const interrupt = (code: number) => () => {
    interrupted = true;
    void (starting ?? Promise.resolve(undefined))
      .then((p) => (p && target ? signalProcess(target, p.pid, 'SIGKILL', opts.user) : undefined))
      .catch(() => undefined)
      .then(() => exitWith(code));
  };
  process.once('SIGINT', interrupt(130));
  process.once('SIGTERM', interrupt(143));
  const connected = await envdOf(id, opts);
  const ctx = connected.ctx;
  target = connected.target;
  if (interrupted) return; // exiting: nothing was started
  // The program and its arguments as given, or the string for the login shell (as commands.run).
  const [cmd, ...args] = opts.shell === undefined ? argv : ['/bin/bash', '-l', '-c', opts.shell];
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  const start = startProcess(
    target,
    { cmd: cmd!, args, ...(opts.env ? { envs: opts.env } : {}), ...(opts.cwd ? { cwd: opts.cwd } : {}), ...(opts.user ? { user: opts.user } : {}) },
    ctx.json
      ? { onStdout: (b) => stdout.push(b), onStderr: (b) => stderr.push(b) }
      : { onStdout: (b) => void process.stdout.write(b), onStderr: (b) => void process.stderr.write(b) },
  );
  starting = start.catch(() => undefined);
  // Once interrupted, the interrupt's exit is the one: the command's end (it was killed) or a
  // failure of the start waits for it.
  const unlessInterrupted = <T>(p: Promise<T>) =>
    p.then(
      (v) => (interrupted ? new Promise<never>(() => undefined) : v),
      (err: unknown) => (interrupted ? new Promise<never>(() => undefined) : Promise.reject(envdFailure(err, id))),
    );
  const started = await unlessInterrupted(start);
  const end = await unlessInterrupted(started.ended);
  if (ctx.json) printJson({ stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString(), exitCode: end.exitCode });
  await exitWith(end.exitCode);
}

/** envd's refusals, said for the CLI (the proxy's 502: the sandbox is not running). */
function envdFailure(err: unknown, id: string): unknown {
  if (!(err instanceof EnvdError)) return err;
  if (err.code === '502') return new CliError(`sandbox ${id} is not running (${err.message})`);
  if (err.code === 'unavailable') return new CliError(err.message);
  return new CliError(`envd: ${err.message}`);
}

async function shell(id: string, opts: ExecOptions): Promise<void> {
  const { sbx } = await connectSandbox(id, opts);
  const stdin = process.stdin;
  const out = process.stdout;
  const tty = stdin.isTTY === true;
  const size = () => ({ cols: out.isTTY && out.columns > 0 ? out.columns : 80, rows: out.isTTY && out.rows > 0 ? out.rows : 24 });
  const pty = await sbx.pty.create({
    ...size(),
    timeoutMs: 0,
    onData: (d) => void out.write(d),
    ...(opts.user ? { user: opts.user } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    ...(opts.env ? { envs: opts.env } : {}),
  });

  // Input in order: each chunk is sent after the previous one.
  let sending: Promise<unknown> = Promise.resolve();
  const send = (data: Uint8Array) => {
    sending = sending.then(() => sbx.pty.sendInput(pty.pid, data)).catch(() => undefined);
  };
  const restore = () => {
    if (tty) stdin.setRawMode(false);
    stdin.pause();
  };
  if (tty) stdin.setRawMode(true);
  stdin.on('data', (chunk: Buffer) => send(new Uint8Array(chunk)));
  // Piped input that ends without `exit`: end the shell as Ctrl-D on a terminal would.
  stdin.on('end', () => send(new Uint8Array([4])));
  stdin.resume();
  const onResize = () => void sbx.pty.resize(pty.pid, size()).catch(() => undefined);
  if (out.isTTY) {
    out.on('resize', onResize);
    process.on('SIGWINCH', onResize);
  }

  let exitCode: number;
  try {
    exitCode = (await pty.wait()).exitCode;
  } catch (err) {
    exitCode = (await exitCodeOf(err)).exitCode;
  } finally {
    restore();
  }
  await exitWith(exitCode);
}

export function registerExecCommands(program: Command) {
  const sandbox = program.commands.find((c) => c.name() === 'sandbox');
  if (!sandbox) throw new Error('the sandbox command must be registered first');

  const common = (cmd: Command) =>
    withEnvdOptions(cmd)
      .option('--user <user>', 'user to run as (default: the template default, "user")')
      .option('--cwd <dir>', 'working directory (default: the home directory of the user)')
      .option('--env <KEY=VALUE>', 'environment variable (repeatable)', keyValueArg);

  // The --json of exec: print {stdout, stderr, exitCode} at the end instead of streaming.
  common(
    sandbox
      .command('exec')
      .description(
        'run a command in a sandbox and exit with its exit code: the program and its arguments as given ' +
          '(no shell), or with --shell a command string run by bash -l -c',
      )
      .argument('<id>', 'sandbox id')
      .argument('[command...]', 'the program and its arguments, passed as they are; put them after --')
      .option('-c, --shell <command>', 'a command string for the login shell (bash -l -c): pipes, ;, $VARS')
      .usage('[options] <id> -- <program> [args...]  |  [options] <id> --shell <command>'),
  ).action(wrap(exec));

  common(
    sandbox
      .command('shell')
      .description('open an interactive shell in a sandbox (a PTY; piped stdin works too)')
      .argument('<id>', 'sandbox id'),
  ).action(wrap(shell));
}

/** Like output.ts's action(), for commands that exit with their own code: errors are one line, exit 1. */
function wrap<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      if (process.stdin.isTTY) process.stdin.setRawMode(false);
      err = explainEnvdError(err);
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`error: ${message.split('\n')[0]}\n`);
      await exitWith(err instanceof CliError ? err.exitCode : 1);
    }
    await exitWith(0);
  };
}
