// Which principal a presented key is: a team's API key (e2b_…) or an admin key (nestbox_admin_…).
// The prefix picks the table, so a key is looked up once and can never match the other kind.
import { authenticateAdminKey, isAdminKey } from './admin-keys.ts';
import type { Sql } from './database.ts';
import { authenticateApiKey } from './teams.ts';

export type Principal = { kind: 'team'; teamId: string; keyId: string } | { kind: 'admin'; adminKeyId: string };

/** null for a malformed, unknown or revoked key. */
export async function authenticateKey(db: Sql, key: string): Promise<Principal | null> {
  return isAdminKey(key) ? authenticateAdminKey(db, key) : authenticateApiKey(db, key);
}
