-- Release an address, only if the claim is still the caller's (compare-and-delete).
-- KEYS: 1 address hash, 2 domain set, 3 the node's address set, 4 directory log stream
-- ARGV: 1 node, 2 node epoch, 3 session id, 4 local part, 5 directory log MAXLEN
-- Returns 1 if the claim was released, 0 if it was not the caller's (a late release: no-op).
local cur = redis.call('HMGET', KEYS[1], 'node', 'nepoch', 'sid')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or cur[3] ~= ARGV[3] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[3], KEYS[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'op', 'unreg', 'key', KEYS[1], 'node', ARGV[1])
return 1
