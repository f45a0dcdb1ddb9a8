-- Claim an address for a session (REGISTER), fenced by (node, node epoch, session).
-- KEYS: 1 address hash, 2 domain set, 3 domain claim counter, 4 the claiming node's address set,
--       5 directory log stream
-- ARGV: 1 node, 2 node epoch, 3 session id, 4 registration (msgpack), 5 local part, 6 now (ms),
--       7 directory log MAXLEN, 8-10 expected holder (node, node epoch, session), '' for none
-- Returns {1, claim epoch} when the claim holds, or {0, node, node epoch, session, registration,
-- claim epoch} of the holder that stays. A holder equal to the expected one is replaced (take-over
-- of a claim whose node the caller found dead).
local cur = redis.call('HMGET', KEYS[1], 'node', 'nepoch', 'sid', 'reg', 'epoch')
if cur[1] then
  local same = cur[1] == ARGV[1] and cur[3] == ARGV[3]
  local expected = ARGV[8] ~= '' and cur[1] == ARGV[8] and cur[2] == ARGV[9] and cur[3] == ARGV[10]
  if not same and not expected then
    return {0, cur[1], cur[2], cur[3], cur[4], cur[5]}
  end
end
local epoch = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'nepoch', ARGV[2], 'sid', ARGV[3], 'reg', ARGV[4],
           'epoch', epoch, 'since', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'op', 'reg', 'key', KEYS[1], 'node', ARGV[1],
           'epoch', epoch)
return {1, epoch}
