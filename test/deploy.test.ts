// The deployment files say what the code does: every setting they give is one Nestbox reads,
// every flag one its CLI takes, every path the agent needs is mounted, the units are valid.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin/nestbox');
const run = promisify(execFile);

/** Every source file's text, once: what the code reads (NESTBOX_* settings, DATABASE_URL). */
let sources: string | undefined;
async function sourceText(): Promise<string> {
  if (sources === undefined) {
    const out: string[] = [];
    const walk = async (dir: string) => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else if (p.endsWith('.ts')) out.push(await readFile(p, 'utf8'));
      }
    };
    await walk(path.join(ROOT, 'src'));
    sources = out.join('\n');
  }
  return sources;
}

/** The long flags `nestbox <command> --help` lists. */
async function flagsOf(command: string): Promise<Set<string>> {
  const help = (await run(BIN, [command, '--help'])).stdout;
  return new Set([...help.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]));
}

async function manifests() {
  const text = await readFile(path.join(ROOT, 'deploy/kubernetes/nestbox.yaml'), 'utf8');
  const docs = parseAllDocuments(text).map((d) => {
    assert.deepEqual(d.errors, [], 'the manifest is valid YAML');
    return d.toJS() as any;
  });
  const byKind = (kind: string) => docs.filter((d) => d?.kind === kind);
  return { docs, byKind };
}

test('kubernetes: the control plane Deployment and Service, the agent DaemonSet with what it needs, the Secret', async () => {
  const { byKind } = await manifests();
  const [deployment] = byKind('Deployment');
  const [service] = byKind('Service');
  const [daemonSet] = byKind('DaemonSet');
  const [secret] = byKind('Secret');
  assert.ok(deployment && service && daemonSet && secret, 'a Deployment, a Service, a DaemonSet and a Secret');
  assert.ok(deployment.spec.replicas >= 2, 'replicas of the stateless control plane');

  const server = deployment.spec.template.spec.containers[0];
  const agent = daemonSet.spec.template.spec.containers[0];
  // The commands and flags are the CLI's.
  assert.equal(server.args[0], 'server');
  assert.equal(agent.args[0], 'agent');
  for (const [c, flags] of [[server, await flagsOf('server')], [agent, await flagsOf('agent')]] as const) {
    for (const a of c.args.filter((x: string) => x.startsWith('--'))) assert.ok(flags.has(a), `nestbox ${c.args[0]} takes ${a}`);
  }
  // Every setting given (Secret, env) is one the code reads.
  const code = await sourceText();
  const given = [...Object.keys(secret.stringData), ...[server, agent].flatMap((c) => (c.env ?? []).map((e: { name: string }) => e.name))];
  for (const name of given.filter((n) => n !== 'HOST_IP')) assert.ok(code.includes(name), `${name} is read by Nestbox`);
  for (const c of [server, agent]) assert.ok(c.envFrom.some((e: any) => e.secretRef?.name === secret.metadata.name), 'settings from the Secret');
  // The Service exposes the API and the proxy ports the server listens on; readiness is a real route.
  const ports = new Map(server.ports.map((p: any) => [p.name, p.containerPort]));
  for (const p of service.spec.ports) assert.ok(ports.has(p.targetPort), `service port ${p.name} targets a container port`);
  assert.equal(server.readinessProbe.httpGet.path, '/health');
  assert.ok(code.includes("'/health'"), 'the API serves /health');
  assert.equal(server.securityContext.privileged, undefined, 'the control plane is not privileged');
  // The agent: the host's network, privileged, and the host paths it uses.
  const ds = daemonSet.spec.template.spec;
  assert.equal(ds.hostNetwork, true);
  assert.equal(agent.securityContext.privileged, true);
  const hostPaths = new Map(ds.volumes.map((v: any) => [v.name, v.hostPath?.path]));
  const mounted = new Set(agent.volumeMounts.map((m: any) => hostPaths.get(m.name)));
  for (const p of ['/var/lib/nestbox', '/run/nestbox', '/sys/fs/cgroup', '/dev']) assert.ok(mounted.has(p), `the agent mounts ${p}`);
  assert.ok(code.includes("'/run/nestbox/addresses'") && code.includes("'/var/lib/nestbox'"), 'those are the paths the agent uses');
  assert.ok(ds.terminationGracePeriodSeconds >= 60, 'time for the drain on SIGTERM');
});

test('systemd: the units are valid, their commands and flags the CLI\'s', async (t) => {
  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find(existsSync);
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-units-'));
  try {
    for (const unit of ['nestbox-server.service', 'nestbox-agent.service']) {
      const text = await readFile(path.join(ROOT, 'deploy/systemd', unit), 'utf8');
      const exec = /^ExecStart=(\S+) (\w+) (.*)$/m.exec(text);
      assert.ok(exec, `${unit} has an ExecStart`);
      assert.equal(exec[1], '/opt/nestbox/bin/nestbox');
      const flags = await flagsOf(exec[2]!);
      for (const a of exec[3]!.split(/\s+/).filter((x) => x.startsWith('--'))) assert.ok(flags.has(a), `nestbox ${exec[2]} takes ${a}`);
      await writeFile(path.join(dir, unit), text.replaceAll('/opt/nestbox/bin/nestbox', BIN));
    }
    if (!analyze) {
      t.diagnostic('systemd-analyze is not installed: the units were checked against the CLI only');
      return;
    }
    const r = await run(analyze, ['verify', ...['nestbox-server.service', 'nestbox-agent.service'].map((u) => path.join(dir, u))]).catch((e) => e);
    assert.equal(r.code ?? 0, 0, `systemd-analyze verify: ${r.stderr}`);
    assert.equal((r.stderr ?? '').trim(), '', `systemd-analyze verify: ${r.stderr}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
