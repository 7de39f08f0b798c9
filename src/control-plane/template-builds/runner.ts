// Runs template builds: a sandbox of the base template (a lifecycle sandbox of the team, so it
// is tracked, billed and reaped like any other), each step in it in order with its output in
// the build's log, then its file system captured as the new template on its node. A failed
// step fails the build with that step's output; the sandbox is killed whatever happens, and a
// template exists only once the capture renamed it into place.
import type { Readable } from 'node:stream';
import { NestboxError } from '../../core/errors.ts';
import type { Database } from '../../store/database.ts';
import {
  appendBuildLog, beatTemplateBuild, failStaleBuilds, finishTemplateBuild, STOPPED_RUNNER_REASON, type BuildLogLevel, type TemplateBuild,
} from '../../store/template-builds.ts';
import type { LifecycleApi } from '../lifecycle-types.ts';
import type { CaptureBody } from '../../node-api/template-builds.ts';
import type { NodeClient } from '../node-client.ts';
import type { NodePool } from '../scheduler.ts';
import { COPY_SCRIPT, describeStep, imageRefVariants, resolveIn, USER_SCRIPT, WORKDIR_SCRIPT, type BuildStep } from './steps.ts';

/** A template as a build sees it on a node (the node API's template, the fields a build reads). */
export interface NodeTemplate {
  name: string;
  meta: {
    owner: string | null;
    env: Record<string, string>;
    workdir: string | null;
    user: string | null;
    repoTags?: string[];
  } | null;
}

/** What a build needs of a node beyond sandboxes: its templates, build files, processes, capture. */
export interface BuildNode {
  readonly nodeId: string;
  listTemplates(): Promise<NodeTemplate[]>;
  getTemplate(name: string): Promise<NodeTemplate>;
  buildFilePresent(owner: string, hash: string): Promise<boolean>;
  putBuildFile(owner: string, hash: string, body: Readable): Promise<void>;
  copyBuildFileInto(sandboxId: string, file: { owner: string; hash: string; path: string }): Promise<void>;
  runProcess(
    sandboxId: string,
    req: { argv: string[]; env?: Record<string, string>; cwd?: string; user?: string },
    onOutput: (channel: 'stdout' | 'stderr', data: Buffer) => void,
    signal?: AbortSignal,
  ): Promise<{ exitCode: number | null; signal: number | null }>;
  captureTemplate(sandboxId: string, body: CaptureBody): Promise<NodeTemplate>;
}

/** A node that can build: one reached over HTTP (in-process test nodes cannot). */
export function buildNodeOf(node: NodeClient | undefined): BuildNode | null {
  const n = node as Partial<BuildNode> | undefined;
  return n && typeof n.runProcess === 'function' && typeof n.captureTemplate === 'function' ? (n as BuildNode) : null;
}

/** What a started build asks for (the body of POST /v2/templates/{id}/builds/{id}, checked). */
export interface BuildSpec {
  base: { kind: 'template'; name: string } | { kind: 'image'; ref: string };
  steps: BuildStep[];
  startCmd: string | null;
  readyCmd: string | null;
}

/** A build step that failed: its message and E2B's step name. */
class StepFailed extends Error {
  constructor(message: string, readonly step: string) {
    super(message);
  }
}

const HEARTBEAT_MS = 5_000;
/** The build sandbox's timeout: a build left by a dead control plane ends with it at the latest. */
const BUILD_SANDBOX_TIMEOUT_MS = 2 * 3600_000;
const MAX_LINE = 8192;
const TAIL_LINES = 30;

/** Where the process state of the build stands after the steps so far. */
interface BuildState {
  env: Record<string, string>;
  workdir: string | null;
  user: string;
}

export class TemplateBuildRunner {
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void>; teamId: string }>();

  constructor(private readonly o: { db: Database; lifecycle: LifecycleApi; nodes: NodePool }) {}

  /** Runs a build (already `building` in the store) in the background. */
  start(build: TemplateBuild, spec: BuildSpec): void {
    const abort = new AbortController();
    const done = this.run(build, spec, abort.signal).finally(() => this.running.delete(build.id));
    this.running.set(build.id, { abort, done, teamId: build.teamId });
  }

  /**
   * Fails the builds whose runner stopped (another control plane that died) and kills their
   * sandboxes. Called by readers of builds: nothing stays `building` once its runner is gone.
   */
  async reapStale(): Promise<void> {
    for (const b of await failStaleBuilds(this.o.db)) {
      if (b.sandboxId) await this.o.lifecycle.kill(b.teamId, b.sandboxId).catch(() => undefined);
    }
  }

  /** Stops every build this process runs: each fails (its control plane is stopping), its sandbox killed. */
  async stop(): Promise<void> {
    for (const r of this.running.values()) r.abort.abort(new Error(STOPPED_RUNNER_REASON));
    await Promise.all([...this.running.values()].map((r) => r.done));
  }

  private async run(build: TemplateBuild, spec: BuildSpec, signal: AbortSignal): Promise<void> {
    const log = new BuildLog(this.o.db, build.id);
    const controller = new AbortController();
    signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
    const beat = setInterval(() => {
      void beatTemplateBuild(this.o.db, build.id).then((alive) => {
        if (!alive) controller.abort(new Error('the build is no longer building'));
      }, () => undefined);
    }, HEARTBEAT_MS);
    let sandboxId: string | null = null;
    try {
      const templates = this.templateNode();
      const base = await this.resolveBase(templates, build.teamId, spec);
      log.line('info', 'base', `Base template: ${base.name}${spec.base.kind === 'image' ? ` (image ${spec.base.ref})` : ''}`);
      const sandbox = await this.o.lifecycle.create({
        teamId: build.teamId, templateId: base.name, timeoutMs: BUILD_SANDBOX_TIMEOUT_MS, metadata: { 'nestbox.templateBuild': build.id },
        envVars: {}, autoPause: false, autoPauseMemory: false, autoResume: false, allowInternetAccess: true, secure: true,
      }).catch((e: unknown) => {
        throw new StepFailed(`could not start a sandbox of template "${base.name}": ${(e as Error).message}`, 'base');
      });
      sandboxId = sandbox.sandboxId;
      await beatTemplateBuild(this.o.db, build.id, sandboxId);
      const node = buildNodeOf(this.o.nodes.get(sandbox.nodeId));
      if (!node) throw new StepFailed(`node ${sandbox.nodeId} cannot run builds`, 'base');
      const m = base.meta;
      const state: BuildState = { env: { ...(m?.env ?? {}) }, workdir: m?.workdir ?? null, user: m ? (m.user?.split(':')[0] || 'root') : 'user' };

      for (const [i, step] of spec.steps.entries()) {
        controller.signal.throwIfAborted();
        const name = String(i + 1);
        log.line('info', name, `[${i + 1}/${spec.steps.length}] ${describeStep(step)}`);
        await this.runStep(node, sandboxId, build.teamId, step, state, name, log, controller.signal);
      }

      controller.signal.throwIfAborted();
      log.line('info', 'finalize', `Capturing the file system as template "${build.templateName}"`);
      await node.captureTemplate(sandboxId, {
        name: build.templateName, owner: build.teamId, env: state.env, workdir: state.workdir, user: state.user,
        startCmd: spec.startCmd, readyCmd: spec.readyCmd, fromTemplate: base.name, buildId: build.id,
      }).catch((e: unknown) => {
        throw new StepFailed(`capturing the template failed: ${(e as Error).message}`, 'finalize');
      });
      await this.killSandbox(build.teamId, sandboxId);
      sandboxId = null;
      log.line('info', 'finalize', `Template "${build.templateName}" is ready`);
      await log.flushed();
      if (!(await finishTemplateBuild(this.o.db, build.id, { status: 'ready' }))) {
        process.stderr.write(`nestbox: build ${build.id} finished after it was failed; template "${build.templateName}" stays\n`);
      }
    } catch (e) {
      const failed = e instanceof StepFailed
        ? e
        : controller.signal.aborted
          ? new StepFailed((controller.signal.reason as Error)?.message ?? 'the build was stopped', 'finalize')
          : new StepFailed(e instanceof NestboxError ? e.message : `internal error: ${(e as Error).message}`, 'base');
      log.line('error', failed.step, `Build failed: ${failed.message}`);
      await log.flushed();
      if (sandboxId) await this.killSandbox(build.teamId, sandboxId);
      await finishTemplateBuild(this.o.db, build.id, { status: 'error', reason: failed.message, step: failed.step });
    } finally {
      clearInterval(beat);
    }
  }

  /** Runs one step; a failure is a StepFailed with the step's output. */
  private async runStep(
    node: BuildNode, sandboxId: string, teamId: string, step: BuildStep, state: BuildState, name: string, log: BuildLog, signal: AbortSignal,
  ): Promise<void> {
    const asRoot = (script: string, args: string[]) =>
      this.exec(node, sandboxId, { argv: ['/bin/bash', '-c', script, 'nestbox-build', ...args], env: state.env, user: 'root' }, name, log, signal);
    switch (step.kind) {
      case 'env':
        Object.assign(state.env, step.vars);
        return;
      case 'user':
        await asRoot(USER_SCRIPT, [step.user]);
        state.user = step.user;
        return;
      case 'workdir': {
        const dir = resolveIn(state.workdir, step.path);
        await asRoot(WORKDIR_SCRIPT, [dir, state.user]);
        state.workdir = dir;
        return;
      }
      case 'run':
        await this.exec(node, sandboxId, {
          argv: ['/bin/bash', '-c', step.command], shArgv: ['/bin/sh', '-c', step.command], env: state.env, user: step.user ?? state.user, ...(state.workdir ? { cwd: state.workdir } : {}),
        }, name, log, signal);
        return;
      case 'copy': {
        const tarball = `/tmp/.nestbox-build-${step.filesHash}`;
        await node.copyBuildFileInto(sandboxId, { owner: teamId, hash: step.filesHash, path: tarball }).catch((e: unknown) => {
          throw new StepFailed(`step ${name} (${describeStep(step)}) failed: its files could not be put in the sandbox: ${(e as Error).message}`, name);
        });
        await asRoot(COPY_SCRIPT, [tarball, step.src, resolveIn(state.workdir, step.dest), step.user ?? state.user, step.mode ?? '']);
        return;
      }
    }
  }

  /**
   * Runs a process to its end, its output lines in the log; a non-zero exit fails the step with
   * its last lines. `shArgv` is tried when `argv`'s program is not in the image (bash, say).
   */
  private async exec(
    node: BuildNode, sandboxId: string, req: { argv: string[]; shArgv?: string[]; env: Record<string, string>; user: string; cwd?: string },
    name: string, log: BuildLog, signal: AbortSignal,
  ): Promise<void> {
    const { shArgv, ...first } = req;
    const tail: string[] = [];
    const lines = new LineSplitter((line) => {
      tail.push(line);
      if (tail.length > TAIL_LINES) tail.shift();
      log.line('info', name, line);
    });
    let exit: { exitCode: number | null; signal: number | null };
    const onOutput = (channel: 'stdout' | 'stderr', data: Buffer) => lines.push(channel, data);
    try {
      exit = await node.runProcess(sandboxId, first, onOutput, signal).catch((e: unknown) => {
        const missing = e instanceof NestboxError && /cannot start .*No such file or directory/.test(e.message);
        if (!shArgv || !missing) throw e;
        return node.runProcess(sandboxId, { ...first, argv: shArgv }, onOutput, signal);
      });
    } catch (e) {
      if (signal.aborted) throw signal.reason;
      throw new StepFailed(`step ${name} could not run: ${(e as Error).message}`, name);
    }
    lines.end();
    if (exit.exitCode === 0) return;
    const how = exit.signal ? `was killed by signal ${exit.signal}` : `exited with code ${exit.exitCode}`;
    const output = tail.length ? `:\n${tail.join('\n')}` : ' (no output)';
    throw new StepFailed(`step ${name} ${how}${output}`, name);
  }

  /** The base template as the team may use it: base, ownerless ones and the team's own. */
  private async resolveBase(node: BuildNode, teamId: string, spec: BuildSpec): Promise<NodeTemplate> {
    const visible = (t: NodeTemplate) => !t.meta?.owner || t.meta.owner === teamId;
    if (spec.base.kind === 'template') {
      const name = spec.base.name;
      const t = await node.getTemplate(name).catch(() => null);
      if (!t || !visible(t)) throw new StepFailed(`template "${name}" not found`, 'base');
      return t;
    }
    const ref = spec.base.ref;
    const names = imageRefVariants(ref);
    const matches = (await node.listTemplates()).filter((x) => visible(x) && (names.includes(x.name) || x.meta?.repoTags?.some((tag) => names.includes(tag))));
    // The team's own import of the image first, then one everyone may use.
    const t = matches.find((x) => x.meta?.owner === teamId) ?? matches[0];
    if (!t) {
      throw new StepFailed(
        `image "${ref}" is not imported on this server, and no registry is reached: import it first (docker save ${ref} | nestbox template import <name>), ` +
          'or build from a template (fromTemplate)', 'base');
    }
    return t;
  }

  /** The node holding templates (nodes share one templates directory). */
  private templateNode(): BuildNode {
    const node = this.o.nodes.all().map(buildNodeOf).find((n) => n && !this.o.nodes.isDraining(n.nodeId)) ?? this.o.nodes.all().map(buildNodeOf).find(Boolean);
    if (!node) throw new StepFailed('no node can build templates now', 'base');
    return node;
  }

  private async killSandbox(teamId: string, sandboxId: string) {
    await this.o.lifecycle.kill(teamId, sandboxId).catch((e: unknown) => {
      // Its timeout and the reconciler end it all the same.
      process.stderr.write(`nestbox: build sandbox ${sandboxId} not killed now: ${(e as Error).message}\n`);
    });
  }
}

/** A build's log: lines appended in order (one insert after the other), never blocking the step. */
class BuildLog {
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly db: Database, private readonly buildId: string) {}

  line(level: BuildLogLevel, step: string | null, message: string) {
    const text = message.length > MAX_LINE ? message.slice(0, MAX_LINE) + '…' : message;
    this.chain = this.chain.then(() => appendBuildLog(this.db, this.buildId, { level, step, message: text })).catch(() => undefined);
  }

  flushed(): Promise<void> {
    return this.chain;
  }
}

/** Output chunks to lines, per channel; a last line without its newline comes at the end. */
class LineSplitter {
  private readonly partial = { stdout: '', stderr: '' };
  private readonly decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };

  constructor(private readonly onLine: (line: string) => void) {}

  push(channel: 'stdout' | 'stderr', data: Buffer) {
    const text = this.partial[channel] + this.decoders[channel].decode(data, { stream: true });
    const parts = text.split('\n');
    this.partial[channel] = parts.pop()!;
    for (const p of parts) this.onLine(p.replace(/\r$/, ''));
  }

  end() {
    for (const c of ['stdout', 'stderr'] as const) {
      if (this.partial[c]) this.onLine(this.partial[c]);
      this.partial[c] = '';
    }
  }
}
