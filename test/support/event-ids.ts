/** A UUID of version 7 and the RFC 9562 variant, as the store names events (event-id.ts). */
export const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The 48-bit Unix time in ms at the front of a version 7 UUID. */
export const timeOfEventId = (id: string): number => parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
