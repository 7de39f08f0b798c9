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
const sources = new Map<string, string>();
async function sourceText(under = ''): Promise<string> {
  if (!sources.has(under)) {
    const out: string[] = [];
    const walk = async (dir: string) => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else if (p.endsWith('.ts')) out.push(await readFile(p, 'utf8'));
      }
    };
    await walk(path.join(ROOT, 'src', under));
    sources.set(under, out.join('\n'));
  }
  return sources.get(under)!;
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
  const named = (kind: string, name: string) => byKind(kind).find((d) => d.metadata.name === name);
  const deployment = byKind('Deployment')[0];
  const daemonSet = byKind('DaemonSet')[0];
  assert.ok(deployment && daemonSet, 'a Deployment and a DaemonSet');
  return {
    docs, byKind, named, deployment, daemonSet,
    server: deployment.spec.template.spec.containers[0],
    agent: daemonSet.spec.template.spec.containers[0],
  };
}

type EnvVar = { name: string; value?: string; valueFrom?: any };

/** A container's environment as the pod would see it, Secret and ConfigMap values filled in. */
function resolvedEnv(env: EnvVar[], named: (kind: string, name: string) => any): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of env) {
    const secret = e.valueFrom?.secretKeyRef;
    const config = e.valueFrom?.configMapKeyRef;
    if (secret) out[e.name] = named('Secret', secret.name).stringData[secret.key];
    else if (config) out[e.name] = named('ConfigMap', config.name).data[config.key];
    else if (e.value !== undefined) out[e.name] = e.value.replace(/\$\((\w+)\)/g, (_, v) => out[v] ?? `$(${v})`);
    else out[e.name] = `<${e.name}>`; // a fieldRef: the node's name or address
  }
  return out;
}

/** The path the Dockerfile's setup installs into (its NESTBOX_HOME), and the CRIU directory it sets. */
async function imageInstall() {
  const text = await readFile(path.join(ROOT, 'deploy/kubernetes/Dockerfile'), 'utf8');
  const home = /^RUN .*\bNESTBOX_HOME=(\S+) bash scripts\/setup\.sh/m.exec(text)?.[1];
  assert.ok(home, 'the Dockerfile runs scripts/setup.sh with its own NESTBOX_HOME');
  const criuEnv = /^ENV NESTBOX_CRIU_BIN_DIR=(\S+)$/m.exec(text)?.[1];
  const workdir = /^WORKDIR (\S+)$/m.exec(text)?.[1];
  return { text, home, criuEnv, workdir };
}

const under = (p: string, dir: string) => p === dir || p.startsWith(dir.replace(/\/$/, '') + '/');

test('kubernetes: the control plane Deployment and Service, the agent DaemonSet, flags and settings Nestbox takes', async () => {
  const { byKind, deployment, server, agent } = await manifests();
  const [service] = byKind('Service');
  assert.ok(service, 'a Service');
  assert.ok(deployment.spec.replicas >= 2, 'replicas of the stateless control plane');
  // The commands and flags are the CLI's.
  assert.equal(server.args[0], 'server');
  assert.equal(agent.args[0], 'agent');
  for (const [c, flags] of [[server, await flagsOf('server')], [agent, await flagsOf('agent')]] as const) {
    for (const a of c.args.filter((x: string) => x.startsWith('--'))) assert.ok(flags.has(a), `nestbox ${c.args[0]} takes ${a}`);
  }
  // Every setting given is one the code reads (HOST_IP only feeds $(HOST_IP) below it).
  const code = await sourceText();
  for (const c of [server, agent]) {
    for (const { name } of c.env as EnvVar[]) {
      if (name === 'HOST_IP') assert.ok(c.env.some((e: EnvVar) => e.value?.includes('$(HOST_IP)')), 'HOST_IP is used');
      else assert.ok(code.includes(name), `${name} is read by Nestbox`);
    }
  }
  // The Service exposes the API and the proxy ports the server listens on; readiness is a real route.
  const ports = new Map(server.ports.map((p: any) => [p.name, p.containerPort]));
  for (const p of service.spec.ports) assert.ok(ports.has(p.targetPort), `service port ${p.name} targets a container port`);
  assert.equal(server.readinessProbe.httpGet.path, '/health');
  assert.ok(code.includes("'/health'"), 'the API serves /health');
  assert.equal(server.securityContext.privileged, undefined, 'the control plane is not privileged');
  assert.deepEqual(server.securityContext.capabilities.drop, ['ALL']);
});

test('kubernetes: each side gets its own secrets, by name and key, and the placeholders are not keys', async () => {
  const { byKind, named, server, agent } = await manifests();
  for (const c of [server, agent]) assert.equal(c.envFrom, undefined, `${c.name}: no envFrom (it would hand over every key)`);
  // Every reference names an existing Secret or ConfigMap and key.
  const refs = (c: any) => (c.env as EnvVar[]).flatMap((e) => {
    const s = e.valueFrom?.secretKeyRef;
    const m = e.valueFrom?.configMapKeyRef;
    if (s) return [{ kind: 'Secret', name: s.name as string, key: s.key as string, env: e.name }];
    if (m) return [{ kind: 'ConfigMap', name: m.name as string, key: m.key as string, env: e.name }];
    return [];
  });
  for (const c of [server, agent]) {
    for (const r of refs(c)) {
      const doc = named(r.kind, r.name);
      assert.ok(doc, `${c.name}: the ${r.kind} ${r.name} exists`);
      assert.ok(r.key in (doc.stringData ?? doc.data), `${c.name}: ${r.kind} ${r.name} has ${r.key}`);
    }
  }
  const secretNames = (c: any) => new Set(refs(c).filter((r) => r.kind === 'Secret').map((r) => r.name));
  const serverSecrets = secretNames(server);
  const agentSecrets = secretNames(agent);
  assert.ok([...serverSecrets].every((n) => !agentSecrets.has(n)), 'no Secret is shared by the control plane and the agents');
  const env = (c: any) => new Set((c.env as EnvVar[]).map((e) => e.name));
  assert.deepEqual([...env(server)].filter((n) => refs(server).some((r) => r.env === n && r.kind === 'Secret')).sort(), ['DATABASE_URL', 'NESTBOX_ADMIN_KEY']);
  for (const n of ['DATABASE_URL', 'NESTBOX_ADMIN_KEY']) assert.ok(!env(agent).has(n), `the agent does not get ${n}`);
  for (const n of ['NESTBOX_JOIN_TOKEN', 'NESTBOX_S3_ACCESS_KEY_ID', 'NESTBOX_S3_SECRET_ACCESS_KEY']) {
    assert.ok(refs(agent).some((r) => r.env === n && r.kind === 'Secret'), `the agent gets ${n} from a Secret`);
    assert.ok(!env(server).has(n), `the control plane does not get ${n}`);
  }
  // The control plane has no use for the object store: only the agents read NESTBOX_S3_*.
  const cpCode = (await sourceText('control-plane')) + (await readFile(path.join(ROOT, 'src/cli/server.ts'), 'utf8'));
  assert.ok(!cpCode.includes('NESTBOX_S3_') && !cpCode.includes('s3ConfigFromEnv'), 'the control plane reads no S3 settings');
  // No key of any Secret is left unused.
  for (const secret of byKind('Secret')) {
    for (const key of Object.keys(secret.stringData)) {
      assert.ok([server, agent].some((c) => refs(c).some((r) => r.name === secret.metadata.name && r.key === key)), `${secret.metadata.name}.${key} is used`);
    }
  }
  // A forgotten placeholder stops the pod (the admin key and join token are checked) instead of
  // opening the fleet with a key published here.
  const { ADMIN_KEY_PATTERN } = await import('../src/store/admin-keys.ts');
  const { JOIN_TOKEN_PATTERN } = await import('../src/store/join-tokens.ts');
  assert.ok(!ADMIN_KEY_PATTERN.test(resolvedEnv(server.env, named).NESTBOX_ADMIN_KEY!), 'the admin key placeholder is not a valid key');
  assert.ok(!JOIN_TOKEN_PATTERN.test(resolvedEnv(agent.env, named).NESTBOX_JOIN_TOKEN!), 'the join token placeholder is not a valid token');
  // $(VAR) is expanded by Kubernetes only from variables defined before it.
  for (const c of [server, agent]) {
    const seen = new Set<string>();
    for (const e of c.env as EnvVar[]) {
      for (const m of (e.value ?? '').matchAll(/\$\((\w+)\)/g)) assert.ok(seen.has(m[1]!), `${c.name}: ${e.name} uses $(${m[1]}), defined before it`);
      seen.add(e.name);
    }
  }
  assert.match(resolvedEnv(agent.env, named).NESTBOX_ADVERTISE_URL!, /^http:\/\/<HOST_IP>:3001$/, 'the advertised URL is the host address and the agent port');
});

test('kubernetes: the agent writes where the host paths are mounted, and finds CRIU and templates where the image put them', async () => {
  const { named, daemonSet, agent } = await manifests();
  const ds = daemonSet.spec.template.spec;
  const image = await imageInstall();
  const volumes = new Map<string, string | undefined>(ds.volumes.map((v: any) => [v.name, v.hostPath?.path]));
  const mounts = (c: any) => (c.volumeMounts as any[]).map((m) => ({ ...m, hostPath: volumes.get(m.name) }));
  // Host paths at the same paths inside: runc's state, the overlays' options and the sandboxes'
  // records name them, and they must resolve alike on the host and in the next agent's container.
  for (const m of mounts(agent)) if (m.hostPath) assert.equal(m.mountPath, m.hostPath, `${m.name} is mounted where it is on the host`);
  const onHost = (p: string) => mounts(agent).some((m) => m.hostPath && under(p, m.mountPath));

  const { runtimeConfigFromEnv } = await import('../src/runtime/config.ts');
  const cfg = runtimeConfigFromEnv(resolvedEnv(agent.env, named));
  assert.ok(cfg.s3, 'snapshots in the object store');
  const code = await sourceText();
  assert.ok(code.includes("new Runc(path.join(cfg.dataDir, 'runc')"), "runc's state directory is in the data directory");
  for (const [what, p] of [
    ['data directory', cfg.dataDir], ['templates directory', cfg.templatesDir], ['snapshot staging', cfg.snapshotDir],
    ["runc's state directory", path.join(cfg.dataDir, 'runc')], ['address claims', '/run/nestbox/addresses'],
  ] as const) {
    assert.ok(onHost(p), `the agent's ${what} (${p}) is on a host path`);
  }
  assert.ok(code.includes("'/run/nestbox/addresses'"), 'the address claims are where the manifest says');
  const data = mounts(agent).find((m) => under(cfg.dataDir, m.mountPath));
  assert.equal(data.mountPropagation, 'Bidirectional', "the sandboxes' mounts reach the host and the next agent");
  // What the image installed is outside every host path (it would be hidden), and is what the agent uses.
  assert.ok(!onHost(image.home), `the image's install (${image.home}) is not under a host path`);
  assert.ok(!onHost(image.workdir!), 'nor its checkout (the sandbox init and network hook)');
  assert.equal(cfg.criuBinDir, path.join(image.home, 'deps/bin'), "the agent's CRIU is the image's");
  assert.equal(image.criuEnv, cfg.criuBinDir, 'the image names the same CRIU directory');
  // The templates the image built are copied onto the host path before the agent starts.
  const init = ds.initContainers?.find((c: any) => c.name === 'templates');
  assert.ok(init, 'an init container copies the templates');
  const script = init.args.join('\n');
  assert.ok(script.includes(`from=${path.join(image.home, 'templates')} `), "it copies from the image's templates");
  assert.ok(script.includes(`to=${cfg.templatesDir}\n`), "to the agent's templates directory");
  assert.ok(mounts(init).some((m) => m.hostPath && under(cfg.templatesDir, m.mountPath) && m.hostPath === data.hostPath), 'on the same host path');
  assert.equal(init.securityContext.privileged, undefined, 'the copy is not privileged');
  assert.deepEqual(init.securityContext.capabilities.drop, ['ALL']);
  // The host's PIDs (sandboxes outlive the agent's container), network (veths, iptables),
  // cgroup tree (sandboxes' cgroups at its root) and devices (loop devices made after start).
  assert.equal(ds.hostPID, true, 'host PIDs: sandboxes survive an agent restart, CRIU sees their PIDs');
  assert.equal(ds.hostNetwork, true, "the host's network: sandboxes' links and iptables chains");
  assert.equal(agent.securityContext.privileged, true);
  assert.ok(code.includes('cgroupsPath: `/nestbox/${'), "sandboxes' cgroups are at the root of the host's tree");
  for (const p of ['/sys/fs/cgroup', '/dev']) assert.ok(mounts(agent).some((m) => m.hostPath === p), `the agent mounts the host's ${p}`);
  assert.deepEqual(
    mounts(agent).map((m) => m.hostPath).sort(),
    ['/dev', '/run/nestbox', '/sys/fs/cgroup', '/var/lib/nestbox'],
    'these host paths and no others',
  );
  assert.ok(ds.terminationGracePeriodSeconds >= 60, 'time for the drain on SIGTERM');
});

test('README: every setting Nestbox reads is in the configuration reference', async () => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Configuration\n');
  assert.ok(start >= 0, 'README has a Configuration section');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  // Testing knobs, not settings: fault injection (chaos) and the spawner's bypass.
  const internal = new Set(['NESTBOX_INJECT_FAULTS', 'NESTBOX_SPAWNER']);
  const read = new Set([...(await sourceText()).matchAll(/\b(NESTBOX_[A-Z0-9]+(?:_[A-Z0-9]+)*|DATABASE_URL)\b/g)].map((m) => m[1]!));
  for (const name of read) {
    if (internal.has(name)) continue;
    assert.ok(section.includes(`\`${name}\``), `${name} is read by Nestbox: give it a row in README "Configuration"`);
  }
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

test('README: the systemd steps write the env files the units read, with settings Nestbox (or the unit) uses', async () => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Running a fleet\n');
  assert.ok(start >= 0, 'README has a "Running a fleet" section');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  const code = await sourceText();
  const files = new Map<string, string[]>();
  for (const m of section.matchAll(/^cat > (\/etc\/nestbox\/\S+) <<'?EOF'?\n([\s\S]*?)\nEOF$/gm)) {
    files.set(m[1]!, m[2]!.split('\n').map((l) => l.split('=')[0]!));
  }
  for (const unit of ['nestbox-server.service', 'nestbox-agent.service']) {
    assert.ok(section.includes(`cp /opt/nestbox/deploy/systemd/${unit} /etc/systemd/system/`), `the steps install ${unit}`);
    const text = await readFile(path.join(ROOT, 'deploy/systemd', unit), 'utf8');
    const envFile = /^EnvironmentFile=(\S+)$/m.exec(text)?.[1];
    assert.ok(envFile && files.has(envFile), `the steps write ${unit}'s ${envFile}`);
    const names = files.get(envFile)!;
    const execStart = /^ExecStart=(.*)$/m.exec(text)![1]!;
    const unitVars = [...execStart.matchAll(/\$\{(\w+)\}/g)].map((m) => m[1]!);
    for (const v of unitVars) assert.ok(names.includes(v), `${envFile} sets ${v}, which ${unit} uses`);
    for (const n of names) assert.ok(unitVars.includes(n) || code.includes(n), `${n} in ${envFile} is read by Nestbox or by ${unit}`);
  }
  // bin/nestbox finds its checkout through its own path: a symlink to it elsewhere would not.
  const bin = await readFile(BIN, 'utf8');
  assert.match(bin, /dirname "\$0"/);
  assert.ok(section.includes('exec /opt/nestbox/bin/nestbox "$@"'), 'the README installs a wrapper, not a symlink');
});
