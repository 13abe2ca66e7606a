-- How many events of a block hold each indexed value: a count over a time
-- window (`--count-by exe|comm|kind|uid`) sums the counts of the blocks
-- wholly inside it and scans only the two edge blocks, instead of reading
-- every row (BENCHMARKS.md, "count-by").
--
-- Rows written before this migration keep n NULL (unknown): their blocks
-- are counted from the rows, as before. The writer adds each committed
-- batch's occurrences (an upsert), so a NULL stays NULL and a count is
-- never partial.
ALTER TABLE event_blocks ADD COLUMN n INTEGER;
