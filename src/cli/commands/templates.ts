// nestbox template import <archive> --name <name> | list | delete <name>
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Command } from 'commander';
import { ApiRequestError, CliError, seg } from '../api-client.ts';
import { action, contextFrom, formatTime, printJson, printTable, println, withApiOptions, type CommonOptions } from '../output.ts';

interface Template {
  name: string;
  builtin: boolean;
  source: 'docker' | 'oci' | 'build' | 'builtin';
  importedAt: string | null;
  layers: number;
  sizeBytes: number;
  repoTags: string[];
  env: Record<string, string>;
  workdir: string | null;
  user: string | null;
  entrypoint: string[] | null;
  cmd: string[] | null;
  startCmd: string | null;
  readyCmd: string | null;
}

const TEMPLATES = '/nestbox/v1/templates';

export const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** Progress on stderr: one rewritten line on a terminal, milestones (one line each) otherwise. */
function progressPrinter(enabled: boolean) {
  const tty = process.stderr.isTTY === true;
  let last = '';
  return {
    update(text: string) {
      if (!enabled || !tty || text === last) return;
      last = text;
      process.stderr.write(`\r\x1b[2K${text}`);
    },
    milestone(text: string) {
      if (!enabled) return;
      if (tty) process.stderr.write(`\r\x1b[2K${text}\n`);
      else process.stderr.write(`${text}\n`);
      last = '';
    },
    clear() {
      if (enabled && tty && last) process.stderr.write('\r\x1b[2K');
    },
  };
}

/** An image's entrypoint + cmd, one line (JSON strings where a word has spaces or quotes). */
function imageCommand(t: Template): string {
  return [...(t.entrypoint ?? []), ...(t.cmd ?? [])].map((w) => (/^[^\s"'\\]+$/.test(w) ? w : JSON.stringify(w))).join(' ');
}

/** What a sandbox starts with, or the image's command kept but not run ("(not run)"). */
function startColumn(t: Template): string {
  const cut = (v: string) => (v.length > 40 ? v.slice(0, 37) + '...' : v);
  if (t.startCmd) return cut(t.startCmd);
  const image = imageCommand(t);
  return image ? `(not run) ${cut(image)}` : '-';
}

export function registerTemplateCommands(program: Command) {
  const tpl = program.command('template').alias('templates').description('import OCI images as templates; list and delete them');

  withApiOptions(
    tpl.command('import').description('import a `docker save` archive or an OCI image layout tarball as a template')
      .argument('<archive>', 'the archive file (tar; its layers may be gzip-compressed)')
      .requiredOption('--name <name>', 'name of the new template (lower-case letters, digits, ".", "_", "-")')
      .option('--start', "run the image's entrypoint + cmd when a sandbox starts (in its workdir, as its user, with its env; the template is then started warm); without it they are only recorded, shown by `template list`")
      .option('--ready-cmd <cmd>', 'with --start: a bash command that exits 0 once the started process is ready (e.g. a port answering)')
      .addHelpText('after', [
        '',
        "The image's env, working directory and user become the defaults of the template's processes.",
        "Its entrypoint and cmd are not run unless --start is given (an image's CMD is often an interactive",
        'shell): with --start they are joined as docker does and become the template\'s start command.',
      ].join('\n')),
  ).action(
    action(async (file: string, opts: CommonOptions & { name: string; start?: boolean; readyCmd?: string }) => {
      const ctx = contextFrom(opts);
      if (opts.readyCmd !== undefined && !opts.start) throw new CliError("--ready-cmd needs --start: without it the image's entrypoint and cmd are not run");
      if (opts.readyCmd !== undefined && opts.readyCmd.trim() === '') throw new CliError('--ready-cmd is empty');
      const st = await stat(file).catch(() => null);
      if (!st || !st.isFile()) throw new CliError(`cannot read ${file}: no such file`);
      const progress = progressPrinter(!ctx.json);
      let sent = 0;
      const source = createReadStream(file, { highWaterMark: 1024 * 1024 });
      source.on('data', (c: Buffer | string) => {
        sent += c.length;
        progress.update(`uploading ${mb(sent)} of ${mb(st.size)}`);
      });
      const url = new URL(`${ctx.client.config.apiUrl}${TEMPLATES}`);
      url.searchParams.set('name', opts.name);
      if (opts.start) url.searchParams.set('start', 'true');
      if (opts.readyCmd) url.searchParams.set('readyCmd', opts.readyCmd);
      let res: Response;
      try {
        res = await fetch(url, {
          method: 'POST',
          headers: {
            'X-API-Key': ctx.client.config.apiKey, 'Content-Type': 'application/x-tar', Accept: 'application/x-ndjson',
            'Content-Length': String(st.size),
          },
          body: Readable.toWeb(source) as unknown as BodyInit,
          duplex: 'half',
        } as RequestInit);
      } catch (err) {
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        throw new CliError(`cannot reach the Nestbox API at ${ctx.client.config.apiUrl}: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
      }
      if (!res.ok || !res.body) {
        const text = await res.text().catch(() => '');
        let message = text.trim().split('\n')[0]?.slice(0, 300) || res.statusText;
        try {
          message = (JSON.parse(text) as { message?: string }).message ?? message;
        } catch {
          /* not JSON */
        }
        progress.clear();
        throw new ApiRequestError(res.status, message);
      }
      let template: Template | null = null;
      let buffered = '';
      const decoder = new TextDecoder();
      const started = Date.now();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line) as Record<string, any>;
          if (ev.type === 'received') progress.milestone(`received ${mb(ev.bytes)}: ${ev.format === 'oci' ? 'OCI layout' : 'docker save'} archive, ${ev.layers} layer${ev.layers === 1 ? '' : 's'}`);
          else if (ev.type === 'layer') progress.update(`layer ${ev.layer}/${ev.layers}: ${mb(ev.bytesDone)} of ${mb(ev.bytes)}`);
          else if (ev.type === 'layer_done') progress.milestone(`layer ${ev.layer}/${ev.layers} applied (${ev.entries} entries)`);
          else if (ev.type === 'done') template = ev.template as Template;
          else if (ev.type === 'error') {
            progress.clear();
            throw new ApiRequestError(typeof ev.code === 'number' ? ev.code : 500, String(ev.message));
          }
        }
      }
      if (!template) throw new CliError('the import ended without an outcome (connection lost?); see `nestbox template list`');
      if (ctx.json) return printJson(template);
      const secs = (Date.now() - started) / 1000;
      println(`Imported template ${template.name}: ${template.layers} layer${template.layers === 1 ? '' : 's'}, ${mb(template.sizeBytes)} of files, in ${secs.toFixed(1)} s (${(st.size / 1e6 / Math.max(secs, 0.001)).toFixed(1)} MB/s).`);
      println(`Defaults: user ${template.user ?? 'root'}, workdir ${template.workdir ?? '(home)'}, ${Object.keys(template.env).length} env vars.`);
      if (template.startCmd) println(`Start command: ${template.startCmd}${template.readyCmd ? ` (ready when: ${template.readyCmd})` : ''}`);
      else if (imageCommand(template)) println(`Entrypoint + cmd (recorded, not run; import with --start to run them): ${imageCommand(template)}`);
      println(`Start a sandbox from it: nestbox sandbox create --template ${template.name}`);
    }),
  );

  withApiOptions(tpl.command('list').description('list the templates this team can use')).action(
    action(async (opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.get<Template[]>(TEMPLATES);
      if (ctx.json) return printJson(body);
      if (body.length === 0) return println('No templates.');
      printTable(
        ['NAME', 'SOURCE', 'LAYERS', 'SIZE', 'USER', 'WORKDIR', 'ENV', 'START', 'IMPORTED'],
        body.map((t) => [
          t.name, t.source, t.builtin ? '-' : String(t.layers), t.builtin ? '-' : mb(t.sizeBytes),
          t.user ?? (t.builtin ? 'user' : 'root'), t.workdir ?? '-',
          Object.entries(t.env).map(([k, v]) => `${k}=${v.length > 40 ? v.slice(0, 37) + '...' : v}`).join(' ') || '-',
          startColumn(t),
          formatTime(t.importedAt),
        ]),
      );
    }),
  );

  withApiOptions(tpl.command('delete').description('delete an imported template (refused while sandboxes use it)').argument('<name>', 'template name')).action(
    action(async (name: string, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      await ctx.client.delete(`${TEMPLATES}/${seg(name)}`);
      if (ctx.json) return printJson({ name, deleted: true });
      println(`Deleted template ${name}.`);
    }),
  );
}
