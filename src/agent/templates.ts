// The node API's template routes: import an image archive (the body, streamed), list, delete.
// An import answers NDJSON: progress lines while it runs, then `done` with the template or
// `error` with its code and message (the status line is sent before the outcome is known;
// refusals decided before the body is read get their own status).
import { PassThrough, Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { invalid, NestboxError } from '../core/errors.ts';
import type { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import { TemplateStore } from '../runtime/templates.ts';
import { registerTemplateBuildRoutes } from './template-builds.ts';
import { NODE_ROUTES as R } from '../node-api/routes.ts';
import { TemplateImportQuery, TemplateNameParam } from '../node-api/schemas.ts';
import type { NodeTemplate, TemplateImportEvent } from '../node-api/wire.ts';

export function registerTemplateRoutes(app: FastifyInstance, opts: { runtime: SandboxRuntime }) {
  const { runtime } = opts;
  const templates = new TemplateStore(runtime.cfg, undefined, runtime.templates);
  const typed = app.withTypeProvider<TypeBoxTypeProvider>();
  // Builds capture templates through the same store: one import, build or delete per name.
  registerTemplateBuildRoutes(app, { runtime, templates });
  // What an agent that died mid-import left behind goes now.
  app.addHook('onReady', async () => {
    const removed = await templates.removeAbandoned().catch(() => [] as string[]);
    for (const name of removed) app.log.warn(`removed ${name}, left by an import or delete that was cut short`);
  });

  typed.get(R.templates, async (): Promise<{ templates: NodeTemplate[] }> => ({ templates: await templates.list() }));
  typed.get(R.template, { schema: { params: TemplateNameParam } }, async (req): Promise<NodeTemplate> => templates.get(req.params.name));

  typed.delete(R.template, { schema: { params: TemplateNameParam } }, async (req, reply) => {
    const name = req.params.name;
    await templates.delete(name, async () => {
      // Running sandboxes and paused ones (their resume needs the template) hold it.
      const live = (await runtime.inventory()).filter((s) => s.template === name).map((s) => s.sandboxId);
      const paused = (await runtime.snapshots()).filter((s) => s.sandbox.template === name).map((s) => s.sandbox.sandboxId);
      return [...new Set([...live, ...paused])];
    });
    await runtime.forgetWarmCaptures(name);
    return reply.code(204).send();
  });

  typed.post(R.templates, { schema: { querystring: TemplateImportQuery } }, async (req, reply) => {
    const { name, owner, start, readyCmd } = req.query;
    const body = req.body as Readable | Buffer | undefined;
    const source = body instanceof Readable ? body : Readable.from([Buffer.isBuffer(body) ? body : Buffer.alloc(0)]);
    try {
      if (readyCmd && !start) throw invalid('a ready command (readyCmd) needs start=true: without it the image\'s entrypoint and cmd are not run');
      await templates.checkImportable(name);
    } catch (e) {
      source.resume();
      throw e;
    }
    const out = new PassThrough();
    const line = (e: TemplateImportEvent) => out.write(JSON.stringify(e) + '\n');
    void (async () => {
      try {
        const info = await templates.import(name, source, { owner: owner ?? null, onEvent: line, ...(start ? { start: { readyCmd: readyCmd ?? null } } : {}) });
        line({ type: 'done', template: info });
      } catch (e) {
        source.resume(); // drain what the client still sends
        const code = e instanceof NestboxError ? e.code : 'internal';
        line({ type: 'error', code, message: e instanceof Error ? e.message : String(e) });
      }
      out.end();
    })();
    reply.header('content-type', 'application/x-ndjson');
    return reply.send(out);
  });
}
