import { randomUUID } from 'node:crypto';
import type { Db } from '../db/types.ts';
import { AppError, PayloadTooLargeError, ValidationError } from '../core/errors.ts';
import { appendToStream } from '../core/event-store/append.ts';
import { readStream } from '../core/event-store/read.ts';
import { assertValidExpectedVersion, isPlainObject, isUuid } from '../core/event-store/validate.ts';
import type { Log } from '../core/log.ts';
import { resolveReadTarget } from '../core/projections/ensure.ts';
import { projectionsOverview } from '../core/projections/overview.ts';
import { ProjectionNotFoundError } from '../core/rebuild/errors.ts';
import { cancelRebuild } from '../core/rebuild/cancel.ts';
import { getRebuildProgress } from '../core/rebuild/progress.ts';
import type { RebuildStarter } from '../core/rebuild/starter.ts';
import { ident } from '../core/sql-ident.ts';
import { readCustomerTotals } from '../domain/customer-totals.ts';
import { DECISION_TYPES, ORDER_ID_PATTERN } from '../domain/events.ts';
import { handleObservation } from '../domain/observe.ts';
import { toOrderSummaryDocument, type OrderSummaryRow } from '../domain/order-summary.ts';
import { projectionNamed, PROJECTIONS } from '../domain/projections.ts';
import { errorResponse, MethodNotAllowedError, RouteNotFoundError } from './errors.ts';
import type { HttpRequest, HttpResponse } from './http-types.ts';

/** Bodies larger than this are refused before parsing (an append is at most 1 MiB of events). */
export const MAX_BODY_BYTES = 1_100_000;

export interface ApiDeps {
  db: Db;
  rebuilds: RebuildStarter;
  log: Log;
}

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

type Handler = (ctx: { params: string[]; query: Record<string, string | undefined>; body: () => unknown; correlationId: string }) => Promise<Reply>;

/**
 * The HTTP API of API.md as one handler over API Gateway's REST proxy event. Thin: parse and
 * validate, call one core function, map the result or the error. The same handler serves AWS (behind
 * IAM-authorised API Gateway) and the local stack.
 */
export function createApi(deps: ApiDeps): (request: HttpRequest) => Promise<HttpResponse> {
  const { db, rebuilds } = deps;
  const routes: Array<{ pattern: RegExp; methods: Record<string, Handler> }> = [
    {
      pattern: /^\/streams\/([^/]+)\/events$/,
      methods: {
        POST: async ({ params, body, correlationId }) => {
          const input = body();
          if (!isPlainObject(input)) throw new ValidationError([{ path: 'body', message: 'must be a JSON object' }]);
          const unknown = Object.keys(input).filter((k) => k !== 'expectedVersion' && k !== 'events');
          if (unknown.length > 0) throw new ValidationError(unknown.map((k) => ({ path: k, message: 'is not a known field' })));
          const expectedVersion: unknown = input.expectedVersion;
          assertValidExpectedVersion(expectedVersion);
          // Decisions are the system's (domain/decide.ts): a client cannot append one to an order
          // stream through the generic route and bypass the write-side logic.
          if (params[0]!.startsWith('order-') && Array.isArray(input.events)) {
            const decisions = input.events.flatMap((e: unknown, i) =>
              isPlainObject(e) && (DECISION_TYPES as readonly unknown[]).includes(e.type)
                ? [{ path: `events[${i}].type`, message: 'decisions are appended by the system; post observations instead' }]
                : [],
            );
            if (decisions.length > 0) throw new ValidationError(decisions);
          }
          // Given the Db, the append is its own transaction: one statement when every inline
          // projection applies in SQL (append.ts).
          const result = await appendToStream(db, params[0]!, input.events as never, {
            expectedVersion: expectedVersion ?? 'any',
            correlationId,
            projections: PROJECTIONS,
          });
          return {
            status: result.duplicate ? 200 : 201,
            body: { streamId: result.streamId, streamVersion: result.streamVersion, globalPositions: result.globalPositions },
          };
        },
      },
    },
    {
      pattern: /^\/streams\/([^/]+)$/,
      methods: {
        GET: async ({ params, query }) => {
          const fromVersion = integerParam(query, 'fromVersion');
          const limit = integerParam(query, 'limit');
          const result = await readStream(db, params[0]!, {
            ...(fromVersion === undefined ? {} : { fromVersion }),
            ...(limit === undefined ? {} : { limit }),
          });
          return {
            status: 200,
            body: {
              streamId: result.streamId,
              version: result.version,
              events: result.events.map((e) => ({
                id: e.id,
                type: e.type,
                data: e.data,
                metadata: e.metadata,
                streamPosition: e.streamPosition,
                globalPosition: e.globalPosition,
                recordedAt: e.recordedAt,
              })),
            },
          };
        },
      },
    },
    {
      pattern: /^\/orders\/([^/]+)\/observations$/,
      methods: {
        POST: async ({ params, body, correlationId }) => {
          const result = await handleObservation(db, params[0]!, body(), { projections: PROJECTIONS, correlationId });
          return {
            status: result.duplicate ? 200 : 201,
            body: {
              streamVersion: result.streamVersion,
              globalPositions: result.globalPositions,
              ...(result.decision ? { decision: result.decision } : {}),
            },
          };
        },
      },
    },
    {
      pattern: /^\/orders\/([^/]+)$/,
      methods: {
        GET: async ({ params }) => {
          const orderId = params[0]!;
          if (!ORDER_ID_PATTERN.test(orderId)) throw new ValidationError([{ path: 'orderId', message: 'is not a valid order id' }]);
          const target = await resolveReadTarget(db, 'order_summary');
          const [row] = target
            ? await db.query<OrderSummaryRow>(
                `select order_id, sections, events_applied, last_global_position from ${ident(target.table)} where order_id = $1`,
                [orderId],
              )
            : [];
          if (!row) throw new AppError('ORDER_NOT_FOUND', 'not_found', `no order ${orderId}`);
          return { status: 200, body: toOrderSummaryDocument(row), headers: rebuildingHeader(target?.rebuilding) };
        },
      },
    },
    {
      pattern: /^\/customers\/([^/]+)$/,
      methods: {
        GET: async ({ params }) => {
          const customerId = params[0]!;
          if (customerId.length > 200 || /[\u0000-\u001f]/.test(customerId)) {
            throw new ValidationError([{ path: 'customerId', message: 'is not a valid customer id' }]);
          }
          const target = await resolveReadTarget(db, 'customer_totals');
          const [doc] = target ? await readCustomerTotals(db, target.table, customerId) : [];
          if (!doc) throw new AppError('CUSTOMER_NOT_FOUND', 'not_found', `no customer ${customerId}`);
          return { status: 200, body: doc, headers: rebuildingHeader(target?.rebuilding) };
        },
      },
    },
    {
      pattern: /^\/projections$/,
      methods: {
        GET: async () => {
          const all = await projectionsOverview(db);
          return {
            status: 200,
            body: all.map((p) => ({
              name: p.name,
              kind: p.kind,
              liveVersion: p.liveVersion,
              state: p.state,
              checkpoint: p.checkpoint,
              skipsPending: p.skipsPending,
              openGaps: p.openGaps,
              oldestGapAgeMs: p.oldestGapAgeMs,
              lag: p.lag,
              rebuild: p.rebuild,
            })),
          };
        },
      },
    },
    {
      pattern: /^\/projections\/([^/]+)\/rebuilds$/,
      methods: {
        POST: async ({ params, body }) => {
          const definition = projectionNamed(params[0]!);
          if (!definition) throw new ProjectionNotFoundError(params[0]!);
          const input = body() ?? {};
          if (!isPlainObject(input)) throw new ValidationError([{ path: 'body', message: 'must be a JSON object' }]);
          const mode = input.mode ?? 'blue-green';
          if (mode !== 'blue-green' && mode !== 'in-place') {
            throw new ValidationError([{ path: 'mode', message: 'must be "blue-green" or "in-place"' }]);
          }
          // `resume`: take over exactly that rebuild (its lease expired), never start another: a
          // retried or late "resume" must not begin a fresh rebuild because the old one ended.
          const resume = input.resume;
          if (resume !== undefined && (typeof resume !== 'string' || !isUuid(resume))) {
            throw new ValidationError([{ path: 'resume', message: 'must be a rebuild id (a UUID)' }]);
          }
          const started = await rebuilds.start(definition, mode, resume === undefined ? {} : { resume });
          return { status: 202, body: { ...started, projection: definition.name } };
        },
      },
    },
    {
      pattern: /^\/projections\/([^/]+)\/rebuilds\/([^/]+)$/,
      methods: {
        DELETE: async ({ params }) => {
          const [name, rebuildId] = params as [string, string];
          const definition = projectionNamed(name);
          if (!definition) throw new ProjectionNotFoundError(name);
          if (!isUuid(rebuildId)) throw new ValidationError([{ path: 'rebuildId', message: 'must be a UUID' }]);
          const cancelled = await cancelRebuild(db, definition, rebuildId.toLowerCase());
          return { status: 200, body: { rebuildId: cancelled.rebuild_id, projection: name, phase: cancelled.phase === 'cancelled' ? 'failed' : cancelled.phase, error: cancelled.error } };
        },
        GET: async ({ params }) => {
          const [name, rebuildId] = params as [string, string];
          if (!projectionNamed(name)) throw new ProjectionNotFoundError(name);
          if (!isUuid(rebuildId)) throw new ValidationError([{ path: 'rebuildId', message: 'must be a UUID' }]);
          const p = await getRebuildProgress(db, name, rebuildId.toLowerCase());
          return {
            status: 200,
            body: {
              rebuildId: p.rebuildId,
              projection: p.projection,
              version: p.version,
              mode: p.mode,
              phase: p.phase === 'cancelled' ? 'failed' : p.phase,
              replayed: p.replayed,
              total: p.total,
              skipsDrained: p.skipsDrained,
              skipsPending: p.skipsPending,
              startedAt: p.startedAt,
              finishedAt: p.finishedAt,
              ...(p.error ? { error: p.error } : {}),
            },
          };
        },
      },
    },
  ];

  return async (request) => {
    const correlationId = correlationIdOf(request);
    const json = (status: number, body: unknown, headers: Record<string, string> = {}): HttpResponse => ({
      statusCode: status,
      headers: { 'content-type': 'application/json', 'x-correlation-id': correlationId, ...headers },
      body: JSON.stringify(body),
    });
    try {
      const segments = splitPath(request.path);
      const route = routes.find((r) => r.pattern.test(joinForMatch(segments)));
      if (!route) throw new RouteNotFoundError();
      const handler = route.methods[request.httpMethod.toUpperCase()];
      if (!handler) throw new MethodNotAllowedError(Object.keys(route.methods));
      const params = route.pattern.exec(joinForMatch(segments))!.slice(1).map((p) => decodeURIComponent(p));
      const reply = await handler({
        params,
        query: request.queryStringParameters ?? {},
        body: () => parseBody(request),
        correlationId,
      });
      return json(reply.status, reply.body, reply.headers);
    } catch (error) {
      const mapped = errorResponse(error, deps.log, correlationId);
      return json(mapped.statusCode, mapped.body, mapped.headers);
    }
  };
}

/** Path segments, each still percent-encoded: a `/` inside an id (`%2F`) stays inside its segment. */
function splitPath(path: string): string[] {
  const segments = path.split('/').filter((s) => s.length > 0);
  for (const s of segments) {
    try {
      decodeURIComponent(s);
    } catch {
      throw new ValidationError([{ path: 'path', message: 'is not valid percent-encoding' }]);
    }
  }
  return segments;
}

function joinForMatch(segments: string[]): string {
  return `/${segments.join('/')}`;
}

function parseBody(request: HttpRequest): unknown {
  const raw = request.body ?? '';
  const text = request.isBase64Encoded ? Buffer.from(raw, 'base64').toString('utf8') : raw;
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_BODY_BYTES) throw new PayloadTooLargeError('the request body', bytes, MAX_BODY_BYTES);
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ValidationError([{ path: 'body', message: 'is not valid JSON' }]);
  }
}

function integerParam(query: Record<string, string | undefined>, name: string): number | undefined {
  const raw = query[name];
  if (raw === undefined) return undefined;
  if (!/^\d{1,15}$/.test(raw)) throw new ValidationError([{ path: name, message: 'must be a non-negative integer' }]);
  return Number(raw);
}

function correlationIdOf(request: HttpRequest): string {
  const header = Object.entries(request.headers ?? {}).find(([k]) => k.toLowerCase() === 'x-correlation-id')?.[1];
  return header && /^[A-Za-z0-9._:-]{1,100}$/.test(header) ? header : (request.requestContext?.requestId ?? randomUUID());
}

function rebuildingHeader(rebuilding: boolean | undefined): Record<string, string> {
  return rebuilding ? { 'x-read-model-rebuilding': 'true' } : {};
}
