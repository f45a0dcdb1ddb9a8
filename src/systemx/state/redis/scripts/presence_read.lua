-- One node's presence, for a reader: the changes since its last read, or everything.
-- KEYS: 1 the node's lease, 2 its presence hash, 3 its change stream (one slot: the {node} tag).
-- ARGV: 1 the hash generation the reader holds ('' = none), 2 the number of the last change
--       it applied, 3 the most changes worth returning (more: everything is cheaper).
-- Change n has the stream id 1-n, so a reader can tell whether it missed one.
-- Returns {0} when the node holds no lease (dead: leave it out);
--         {1, generation, last change, changes}: the XRANGE entries after ARGV[2], in order;
--         {2, generation, last change}: the reader must start over, with an HGETALL of the
--         hash (not done here: a Lua copy of a large hash costs Redis far more than the
--         command): another generation (the node restarted or wrote its hash anew),
--         changes it has not read trimmed from the stream, or too many of them. The hash
--         it reads may hold changes after "last change"; reading those again later is
--         harmless (each change sets a key's whole state).
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local gen = redis.call('HGET', KEYS[2], 'g')
if gen and gen == ARGV[1] then
  local most = tonumber(ARGV[3])
  local changes = redis.call('XRANGE', KEYS[3], '(1-' .. ARGV[2], '+', 'COUNT', most + 1)
  if #changes == 0 then return {1, gen, tonumber(ARGV[2]), changes} end
  local first = tonumber(string.sub(changes[1][1], 3))
  if first == tonumber(ARGV[2]) + 1 and #changes <= most then
    return {1, gen, tonumber(string.sub(changes[#changes][1], 3)), changes}
  end
end
local last = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
return {2, gen or '', last}
