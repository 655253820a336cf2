-- ledgerline_source_time with a cheaper test of its common form in front of migration 004's rule,
-- which stays whole under another name and answers every other value: the same answers
-- (test/int/source-time.int.test.ts holds it to its JS twin), at about half the cost for the
-- common form, which a replay computes for every event.
--
-- The common form, the one JS toISOString() writes ('2026-01-01T00:00:00.000Z'), is valid iff
-- PostgreSQL reads it (digits, a date that exists) with the hour, minute and second in range (it
-- reads hour 24 and second 60, and rolls them over), in the years 1000 to 9998; then it is its own
-- normal form. Migration 004 checked the range by writing the value back with to_char and comparing
-- (0.8 µs more per event in a throwaway timing over 200,000 events). A value of that shape that
-- fails here goes on to 004's rule, which refuses it too.
--
-- Both are SQL functions of one expression, so both are inlined into the statements that call them
-- (the apply passes a column, so p_value's several uses cost nothing more).
alter function ledgerline_source_time(text) rename to ledgerline_source_time_004;

create function ledgerline_source_time(p_value text) returns text
language sql stable parallel safe as $$
  select case
    when p_value like '____-__-__T__:__:__.___Z' and p_value collate "C" >= '1000' and p_value collate "C" < '9999'
     and pg_input_is_valid(p_value, 'timestamptz')
     and substr(p_value, 12, 2) collate "C" < '24' and substr(p_value, 15, 2) collate "C" < '60'
     and substr(p_value, 18, 2) collate "C" < '60'
    then p_value
    else ledgerline_source_time_004(p_value)
  end
$$;
