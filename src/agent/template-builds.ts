// The node API's template-build routes: the files a build copies (stored by team and content
// hash beside the templates), putting one into a build's sandbox, and capturing a sandbox's file
// system as a new template (its processes frozen while the merged root is copied).
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { notFound } from '../core/errors.ts';
import { BuildFileStore } from '../runtime/build-files.ts';
import type { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import { importLimitsFromEnv, type TemplateStore } from '../runtime/templates.ts';
import { SandboxIdParam } from '../node-api/schemas.ts';
import { BuildFileParams, CaptureBody, SandboxBuildFileBody, TEMPLATE_BUILD_ROUTES as R } from '../node-api/template-builds.ts';

export function registerTemplateBuildRoutes(app: FastifyInstance, opts: { runtime: SandboxRuntime; templates: TemplateStore }) {
  const { runtime, templates } = opts;
  const files = new BuildFileStore(runtime.cfg, importLimitsFromEnv().archiveBytes);
  const typed = app.withTypeProvider<TypeBoxTypeProvider>();

  typed.get(R.buildFile, { schema: { params: BuildFileParams } }, async (req) => ({
    present: await files.has(req.params.owner, req.params.hash),
  }));

  typed.put(R.buildFile, { schema: { params: BuildFileParams } }, async (req) => {
    const body = req.body as Readable | Buffer | undefined;
    const source = body instanceof Readable ? body : Readable.from([Buffer.isBuffer(body) ? body : Buffer.alloc(0)]);
    return files.put(req.params.owner, req.params.hash, source);
  });

  // Written through the sandbox's init, inside its own mount namespace, as its root: the agent
  // resolves no path the sandbox controls. The COPY step unpacks it in there.
  typed.post(R.sandboxBuildFile, { schema: { params: SandboxIdParam, body: SandboxBuildFileBody } }, async (req) => {
    const { owner, hash, path } = req.body;
    if (!(await files.has(owner, hash))) throw notFound(`build file ${hash} was not uploaded`);
    const entry = await runtime.initClient(req.params.id).writeFile(path, createReadStream(files.path(owner, hash)), { user: 'root', mode: 0o600 });
    return { entry };
  });

  typed.post(R.capture, { schema: { params: SandboxIdParam, body: CaptureBody } }, async (req, reply) => {
    const { name, ...meta } = req.body;
    await runtime.record(req.params.id); // 404 for a sandbox this node does not hold
    const info = await templates.capture(name, meta, (rootfs) => runtime.copyFileSystem(req.params.id, rootfs));
    return reply.code(201).send(info);
  });
}
