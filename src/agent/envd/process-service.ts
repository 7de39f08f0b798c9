// process.Process over the sandbox init: every RPC maps onto one InitClient call.
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { ExitStatus } from '../../runtime/init/answers.ts';
import type { InitClient } from '../../runtime/init/client.ts';
import { InitError } from '../../runtime/init/errors.ts';
import type { ProcessStream } from '../../runtime/init/streams.ts';
import { envdContextKey, expandPath, keepaliveIntervalMs, type EnvdRequestContext } from './context.ts';
import { toConnectError } from './errors.ts';
import { withKeepalive } from './keepalive.ts';
import {
  Process, Signal, type ProcessEventSchema, type ProcessSelector,
} from './gen/process/process_pb.ts';

type ProcessEventInit = MessageInitShape<typeof ProcessEventSchema>;

/** Go's names of the signals (envd's `status` is Go's ProcessState.String()). */
const SIGNAL_NAMES: Record<number, string> = {
  1: 'hangup', 2: 'interrupt', 3: 'quit', 4: 'illegal instruction', 5: 'trace/breakpoint trap', 6: 'aborted',
  7: 'bus error', 8: 'floating point exception', 9: 'killed', 10: 'user defined signal 1', 11: 'segmentation fault',
  12: 'user defined signal 2', 13: 'broken pipe', 14: 'alarm clock', 15: 'terminated',
};

/** The `end` event envd sends: exited/exit code, or a signal with exit code -1. */
export function endEvent(exit: ExitStatus): ProcessEventInit {
  if (exit.signal !== null) {
    const status = `signal: ${SIGNAL_NAMES[exit.signal] ?? `signal ${exit.signal}`}`;
    return { event: { case: 'end', value: { exitCode: -1, exited: false, status, error: status } } };
  }
  const code = exit.exitCode ?? -1;
  const status = `exit status ${code}`;
  return { event: { case: 'end', value: { exitCode: code, exited: true, status, error: code === 0 ? undefined : status } } };
}

export function requestContext(ctx: HandlerContext): EnvdRequestContext {
  const rc = ctx.values.get(envdContextKey);
  if (!rc) throw new ConnectError('envd request context missing', Code.Internal);
  return rc;
}

async function resolvePid(init: InitClient, sel: ProcessSelector | undefined): Promise<number> {
  const s = sel?.selector;
  if (s?.case === 'pid') {
    if (!s.value) throw new ConnectError('process selector: pid must be > 0', Code.InvalidArgument);
    return s.value;
  }
  if (s?.case === 'tag') {
    const found = (await init.list()).find((p) => p.tag === s.value);
    if (!found) throw new ConnectError(`process with tag "${s.value}" not found`, Code.NotFound);
    return found.pid;
  }
  throw new ConnectError('a process selector (pid or tag) is required', Code.InvalidArgument);
}

/**
 * Streams a process: start {pid}, its output as data events (with keep-alives while idle),
 * then end. A client that goes away only detaches; the process keeps running.
 */
async function* relay(stream: ProcessStream, ctx: HandlerContext): AsyncGenerator<{ event: ProcessEventInit }> {
  const detach = () => stream.detach();
  ctx.signal.addEventListener('abort', detach, { once: true });
  try {
    yield { event: { event: { case: 'start', value: { pid: stream.pid } } } };
    const interval = keepaliveIntervalMs(ctx.requestHeader.get('keepalive-ping-interval'));
    const events = withKeepalive(stream, interval, () => null);
    for await (const chunk of events) {
      if (chunk === null) {
        yield { event: { event: { case: 'keepalive', value: {} } } };
        continue;
      }
      yield { event: { event: { case: 'data', value: { output: { case: chunk.channel, value: chunk.data } } } } };
    }
    if (ctx.signal.aborted) throw toConnectError(ctx.signal.reason);
    yield { event: endEvent(await stream.exited) };
  } catch (e) {
    if (ctx.signal.aborted) throw toConnectError(ctx.signal.reason);
    // The init went away mid-stream (the sandbox was killed or stopped): answer as a dropped
    // connection (unknown, "terminated"), on which the SDK probes the sandbox's health and, when
    // it is gone, reports that it "was killed or reached its end of life".
    if (e instanceof InitError && e.code === 'unavailable') {
      throw new ConnectError(`terminated: ${e.message}`, Code.Unknown);
    }
    throw toConnectError(e);
  } finally {
    ctx.signal.removeEventListener('abort', detach);
    stream.detach();
  }
}

export const processService: Partial<ServiceImpl<typeof Process>> = {
  async *start(req, ctx) {
    const rc = requestContext(ctx);
    const cfg = req.process;
    if (!cfg?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
    let stream: ProcessStream;
    try {
      stream = await rc.init.start({
        argv: [cfg.cmd, ...cfg.args],
        env: { ...rc.envVars, ...cfg.envs },
        cwd: cfg.cwd ? expandPath(cfg.cwd) : (rc.cwd ?? null),
        user: rc.user,
        pty: req.pty ? { cols: req.pty.size?.cols || 80, rows: req.pty.size?.rows || 24 } : null,
        // envd keeps stdin open unless the client says `stdin: false` (SDK >= envd 0.3.0).
        stdin: req.stdin ?? true,
        tag: req.tag ?? null,
      });
    } catch (e) {
      throw toConnectError(e);
    }
    // As envd does, a deadline (Connect-Timeout-Ms, the SDK's timeoutMs) kills the process,
    // whether or not the client is still there when it passes. The runtime keeps it: it goes
    // with the sandbox through a pause and a resume, and time paused does not count.
    const timeoutMs = ctx.timeoutMs();
    if (timeoutMs !== undefined && timeoutMs > 0) {
      const pid = stream.pid;
      rc.runtime.commandDeadlines.arm(rc.sandboxId, pid, cfg.cmd, timeoutMs);
      stream.exited.then(
        () => rc.runtime.commandDeadlines.disarm(rc.sandboxId, pid),
        () => undefined, // detached: the process may still run, the deadline still applies
      );
    }
    yield* relay(stream, ctx);
  },

  async *connect(req, ctx) {
    const rc = requestContext(ctx);
    let stream: ProcessStream;
    try {
      stream = await rc.init.attach(await resolvePid(rc.init, req.process));
    } catch (e) {
      throw toConnectError(e);
    }
    yield* relay(stream, ctx);
  },

  async list(_req, ctx) {
    const rc = requestContext(ctx);
    try {
      const procs = await rc.init.list();
      return {
        processes: procs.map((p) => ({
          pid: p.pid,
          tag: p.tag ?? undefined,
          config: { cmd: p.argv[0] ?? '', args: p.argv.slice(1), envs: p.env, cwd: p.cwd },
        })),
      };
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async sendInput(req, ctx) {
    const rc = requestContext(ctx);
    try {
      const pid = await resolvePid(rc.init, req.process);
      const data = req.input?.input.value;
      if (data?.length) await rc.init.input(pid, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async streamInput(reqs, ctx) {
    const rc = requestContext(ctx);
    let pid: number | null = null;
    try {
      for await (const r of reqs) {
        const ev = r.event;
        if (ev.case === 'start') {
          pid = await resolvePid(rc.init, ev.value.process);
        } else if (ev.case === 'data') {
          if (pid === null) throw new ConnectError('stream input: a start event must come first', Code.InvalidArgument);
          const data = ev.value.input?.input.value;
          if (data?.length) await rc.init.input(pid, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
        }
        // keepalive (and unknown events): nothing to do
      }
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async sendSignal(req, ctx) {
    const rc = requestContext(ctx);
    if (req.signal !== Signal.SIGTERM && req.signal !== Signal.SIGKILL) {
      throw new ConnectError(`unsupported signal ${req.signal}`, Code.InvalidArgument);
    }
    try {
      await rc.init.signal(await resolvePid(rc.init, req.process), req.signal);
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async closeStdin(req, ctx) {
    const rc = requestContext(ctx);
    try {
      await rc.init.closeStdin(await resolvePid(rc.init, req.process));
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async update(req, ctx) {
    const rc = requestContext(ctx);
    try {
      const pid = await resolvePid(rc.init, req.process);
      const size = req.pty?.size;
      if (size) {
        if (!size.cols || !size.rows) throw new ConnectError('pty size needs cols and rows > 0', Code.InvalidArgument);
        await rc.init.resize(pid, size.cols, size.rows);
      }
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },
};
