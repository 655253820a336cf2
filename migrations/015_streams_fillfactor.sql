-- The stream table's pages hold a quarter of what they could, so that pruning them costs less.
--
-- Why: every append updates its stream's row (a HOT update: a new version of the row on the same
-- page), and streams that are created together, an hour's orders, share pages and take their
-- appends together. PostgreSQL prunes a page on access when less than max(the fillfactor's free
-- space, a tenth of the page) is free and it holds dead versions (heap_page_prune_opt); with
-- streams taking their appends, that is nearly every access at any fillfactor, and each pruning
-- compacts every live row on the page: about 110 stream rows at the default 100%, about 27 at 25%.
-- Appends to streams on one page also wait for each other on its buffer lock; fewer streams per
-- page, fewer such waits.
-- Counted as `npm run bench` scenario 5 counts (throwaway runs of it on migration 013's body, the
-- setting alone): 878,653 instructions per append at 100%, 862,844 at 50, 855,296 at 25, 848,610 at
-- 10. The cost is space: the table takes about four times the pages (for 10 million streams, about
-- 3 GB instead of 0.7, next to a log of 100 million events that takes tens of GB).
--
-- Rows already stored keep their pages until the table is rewritten (VACUUM FULL, CLUSTER, or
-- pg_repack without a lock on writes); rows inserted from now on are placed at 25%.

alter table streams set (fillfactor = 25);
