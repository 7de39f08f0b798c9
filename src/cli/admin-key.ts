// The admin key for the operator's commands (nestbox teams, nestbox admin-keys): --admin-key,
// else NESTBOX_ADMIN_KEY, else the file the control plane wrote at its first start on this host.
import { adminKeyFilePath, controlDirFromEnv, readAdminKeyFile } from '../control-plane/admin-key-file.ts';
import { CliError, resolveApiUrl, type ApiConfig } from './api-client.ts';

export interface AdminOptionValues {
  apiUrl?: string;
  adminKey?: string;
}

export function resolveAdminConfig(flags: AdminOptionValues, env: NodeJS.ProcessEnv = process.env): ApiConfig {
  const apiUrl = resolveApiUrl(flags, env);
  const given = flags.adminKey || env.NESTBOX_ADMIN_KEY;
  if (given) return { apiUrl, apiKey: given };
  const file = adminKeyFilePath(controlDirFromEnv(env));
  let kept: string | null;
  try {
    kept = readAdminKeyFile(file);
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === 'EACCES' ? 'permission denied (it is readable by root only)' : (e as Error).message;
    throw new CliError(`cannot read the admin key file ${file}: ${why}; run as root, or set NESTBOX_ADMIN_KEY`);
  }
  if (!kept) {
    throw new CliError(
      `no admin key: set NESTBOX_ADMIN_KEY or pass --admin-key (on the Nestbox host, the first start wrote it to ${file})`,
    );
  }
  return { apiUrl, apiKey: kept };
}
