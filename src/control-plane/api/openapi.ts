import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A copy of a JSON schema in which properties that have a default are not listed as required.
 * In the route schemas they are "required" only because validation fills the default in first;
 * a client may omit them.
 */
export function withoutDefaultedRequired(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(withoutDefaultedRequired);
  if (!isObject(schema)) return schema;
  const out: Json = {};
  for (const [k, v] of Object.entries(schema)) out[k] = withoutDefaultedRequired(v);
  const props = schema.properties;
  if (Array.isArray(schema.required) && isObject(props)) {
    const required = schema.required.filter((name) => !(isObject(props[name]) && 'default' in (props[name] as Json)));
    if (required.length > 0) out.required = required;
    else delete out.required;
  }
  return out;
}

/** A request body none of whose fields is required may be omitted altogether. */
function markOptionalBodies(doc: Json) {
  const paths = isObject(doc.paths) ? doc.paths : {};
  for (const item of Object.values(paths)) {
    if (!isObject(item)) continue;
    for (const op of Object.values(item)) {
      const body = isObject(op) && isObject(op.requestBody) ? op.requestBody : null;
      const content = body && isObject(body.content) ? body.content['application/json'] : null;
      const schema = isObject(content) && isObject(content.schema) ? content.schema : null;
      if (body && schema && !(Array.isArray(schema.required) && schema.required.length > 0)) body.required = false;
    }
  }
  return doc;
}

/**
 * Generates the OpenAPI document from the route schemas. Register before the routes (it
 * collects them as they are added); `serveOpenApi` then serves it at GET /openapi.json.
 */
export function registerOpenApi(app: FastifyInstance, version: string) {
  void app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Nestbox API',
        description: 'Sandbox control plane, wire-compatible with the E2B REST API.',
        version,
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: "A team's API key (e2b_…)" },
          adminKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'An admin key (nestbox_admin_…)' },
          nodeCredential: { type: 'http', scheme: 'bearer', description: "A joined node's own credential (nbnode_…), for its heartbeats" },
        },
      },
    },
    transform: ({ schema, url }) => ({ schema: withoutDefaultedRequired(schema) as typeof schema, url }),
    transformObject: (doc) => ('openapiObject' in doc ? markOptionalBodies(doc.openapiObject as Json) : doc.swaggerObject),
  });
}

export function serveOpenApi(app: FastifyInstance) {
  app.get(
    '/openapi.json',
    { schema: { hide: true }, config: { public: true } },
    async (_req, reply) => reply.type('application/json').send(app.swagger()),
  );
}
