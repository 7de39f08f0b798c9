import { invalid } from '../../core/errors.ts';
import type { CreateSandboxParams } from '../lifecycle-types.ts';
import { notImplemented } from './errors.ts';
import type { NewSandbox, NewSandboxV2 } from './schemas.ts';

// Turns a validated create request into lifecycle parameters. E2B features Nestbox does not
// implement are refused with 501 only when the request actually asks for them (an empty `mcp`,
// `network`, `iam` or `volumeMounts` asks for nothing and is ignored).

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isEmpty = (v: unknown): boolean =>
  v === undefined || v === null || v === '' || (Array.isArray(v) && v.length === 0) || (isObject(v) && Object.keys(v).length === 0);

const DENY_ALL = ['0.0.0.0/0'];

/** The internet access a `network` config asks for, or a 501 when it asks for more than on/off. */
function internetAccessFrom(network: unknown, allowInternetAccess: boolean): boolean {
  if (isEmpty(network)) return allowInternetAccess;
  if (!isObject(network)) throw invalid('network must be an object');
  const { allowOut, denyOut, allowPublicTraffic, egressProxy, rules, maskRequestHost, httpsPorts } = network;
  if (allowPublicTraffic === false) throw notImplemented('network.allowPublicTraffic=false (authenticated sandbox URLs)');
  if (!isEmpty(allowOut)) throw notImplemented('network.allowOut (egress allow rules)');
  if (!isEmpty(egressProxy)) throw notImplemented('network.egressProxy');
  if (!isEmpty(rules)) throw notImplemented('network.rules (egress request transforms)');
  if (!isEmpty(maskRequestHost)) throw notImplemented('network.maskRequestHost');
  if (!isEmpty(httpsPorts)) throw notImplemented('network.httpsPorts');
  if (isEmpty(denyOut)) return allowInternetAccess;
  // denyOut ["0.0.0.0/0"] is E2B's spelling of allow_internet_access=false; finer rules are not supported
  if (Array.isArray(denyOut) && denyOut.length === DENY_ALL.length && denyOut.every((d, i) => d === DENY_ALL[i])) return false;
  throw notImplemented('network.denyOut (egress deny rules other than 0.0.0.0/0)');
}

function autoResumeFrom(v: NewSandbox['autoResume']): boolean {
  if (v === undefined || v === null) return false;
  return typeof v === 'boolean' ? v : v.enabled;
}

export function createParams(teamId: string, body: NewSandbox | NewSandboxV2): CreateSandboxParams {
  if (!isEmpty(body.mcp)) throw notImplemented('mcp (MCP gateway)');
  if (!(isEmpty(body.iam) || (isObject(body.iam) && isEmpty(body.iam.tokens)))) throw notImplemented('iam (workload identity tokens)');
  if (!isEmpty(body.volumeMounts)) throw notImplemented('volumeMounts (volumes)');

  const autoPause = body.autoPause;
  const autoPauseMemory = body.autoPauseMemory ?? true;
  const autoResume = autoResumeFrom(body.autoResume);
  if (autoResume && !autoPause) throw invalid('autoResume requires autoPause (onTimeout: pause)');
  if (autoResume && !autoPauseMemory) throw invalid('autoResume cannot be combined with autoPauseMemory=false');

  return {
    teamId,
    templateId: body.templateID,
    timeoutMs: body.timeout * 1000,
    metadata: body.metadata ?? {},
    envVars: body.envVars ?? {},
    autoPause,
    autoPauseMemory,
    autoResume,
    allowInternetAccess: internetAccessFrom(body.network, body.allow_internet_access),
    secure: 'secure' in body ? body.secure : true,
  };
}
