import { afterEach, describe, expect, it } from 'vitest';
import { breakages, resetBreakages } from '../../functions/core/breakages.ts';
import { newEventId } from '../../functions/core/event-store/event-id.ts';
import { UUID_V7, timeOfEventId as timeOf } from '../support/event-ids.ts';

afterEach(() => resetBreakages());

describe('the ids the store gives events (event-id.ts)', () => {
  it('are UUIDs of version 7 and the RFC 9562 variant, whose first 48 bits are the time', () => {
    const at = Date.UTC(2026, 11, 3, 21, 30, 0, 123);
    const id = newEventId(at);
    expect(id).toMatch(UUID_V7);
    expect(timeOf(id)).toBe(at);
    const t0 = Date.now();
    expect(timeOf(newEventId())).toBeGreaterThanOrEqual(t0);
    expect(timeOf(newEventId())).toBeLessThanOrEqual(Date.now());
  });

  it('sort by their time as lowercase hex text (the byte order in which PostgreSQL compares uuids), and differ within one millisecond', () => {
    const at = Date.UTC(2026, 0, 1);
    const ids = [at + 1, at, at + 1000, at + 2].map((t) => newEventId(t));
    expect([...ids].sort()).toEqual([ids[1], ids[0], ids[3], ids[2]]);
    const same = new Set(Array.from({ length: 10_000 }, () => newEventId(at)));
    expect(same.size).toBe(10_000);
  });

  it('are random version 4 UUIDs with the protection switched off (the bench baseline)', () => {
    breakages.randomEventIds = true;
    expect(newEventId()).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });
});
