-- Free one batch of the addresses a node held (the node died, or restarted with a new epoch).
-- KEYS: 1 the node's address set, 2 the node's lease hash, 3 directory log stream, 4 node heartbeat zset
-- ARGV: 1 node, 2 below: free claims whose node epoch is lower ('' = any epoch), 3 batch size,
--       4 directory log MAXLEN
-- Returns {-1, left} without touching anything when the node holds a lease (with `below` given: a
-- lease whose epoch is not below it); the node is alive and only it may clean up after itself.
-- Else {freed, left}. The address set may
-- hold keys another node has since claimed; those are dropped from the set and left alone.
local below = math.huge
if ARGV[2] ~= '' then below = tonumber(ARGV[2]) end
local lease = redis.call('HGET', KEYS[2], 'epoch')
if lease and (ARGV[2] == '' or tonumber(lease) >= below) then
  return {-1, redis.call('SCARD', KEYS[1])}
end
local freed = 0
for _, key in ipairs(redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))) do
  local cur = redis.call('HMGET', key, 'node', 'nepoch')
  if cur[1] == ARGV[1] and tonumber(cur[2]) < below then
    redis.call('DEL', key)
    local prefix, tag, localpart = string.match(key, '^(.*):a:(%b{}):(.*)$')
    if prefix then
      redis.call('SREM', prefix .. ':d:' .. tag, localpart)
    end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'op', 'unreg', 'key', key, 'node', ARGV[1],
               'reason', 'swept')
    freed = freed + 1
  end
end
local left = redis.call('SCARD', KEYS[1])
if left == 0 and not lease then
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return {freed, left}
