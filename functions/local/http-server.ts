import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { HttpRequest, HttpResponse } from '../http/http-types.ts';
import { MAX_BODY_BYTES } from '../http/api.ts';

/**
 * Serves the API handler over plain HTTP on loopback, turning each request into the API Gateway
 * proxy event the deployed handler receives (method, raw path, query, headers, body).
 */
export function serveApi(handler: (request: HttpRequest) => Promise<HttpResponse>, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    void (async () => {
      const body = await readBody(req, MAX_BODY_BYTES + 1);
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const query: Record<string, string> = {};
      for (const [k, v] of url.searchParams) query[k] = v;
      const response = await handler({
        httpMethod: req.method ?? 'GET',
        path: url.pathname,
        headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(',') : v])),
        queryStringParameters: Object.keys(query).length > 0 ? query : null,
        body,
        requestContext: { requestId: crypto.randomUUID() },
      });
      res.writeHead(response.statusCode, response.headers);
      res.end(response.body);
    })().catch(() => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'INTERNAL', message: 'an internal error occurred' } }));
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

/** Reads at most `limit` bytes; a larger body is cut there, and the handler answers 413 for it. */
async function readBody(req: IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const b = chunk as Buffer;
    if (size < limit) chunks.push(b.subarray(0, limit - size));
    size += b.length;
  }
  return Buffer.concat(chunks).toString('utf8');
}
