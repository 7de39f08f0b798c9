// What `nestbox up` prints once it serves: what a client needs, ready to paste, and the keys
// made by this start (each shown this once).
import type { StartedControlPlane } from '../control-plane/control-plane.ts';

export interface BannerContext {
  store: string;
  agentUrl: string;
  /** Where the admin key is kept on this host (`<control dir>/admin-key`). */
  adminKeyFile: string;
}

export function upBanner(started: StartedControlPlane, ctx: BannerContext): string[] {
  const lines = [
    `Nestbox is up (store: ${ctx.store}; node agent: ${ctx.agentUrl}).`,
    '',
    `E2B_API_URL=${started.url.replace('0.0.0.0', '127.0.0.1')}`,
    `E2B_SANDBOX_URL=${started.proxyUrl ?? '(sandbox proxy disabled)'}`,
    started.createdApiKey
      ? `E2B_API_KEY=${started.createdApiKey}`
      : '# E2B_API_KEY: the key printed at the first start (or create one: nestbox keys create)',
  ];
  if (started.createdAdminKey) {
    const kept = started.adminKeyFile ? `; kept in ${started.adminKeyFile}, readable by root only` : '';
    lines.push(`# the admin key, for nestbox teams and nestbox admin-keys (shown once${kept}):`);
    lines.push(`NESTBOX_ADMIN_KEY=${started.createdAdminKey}`);
  } else {
    lines.push(`# NESTBOX_ADMIN_KEY: printed at the first start; root finds it in ${ctx.adminKeyFile} on the host that made it`);
  }
  lines.push('');
  return lines;
}
