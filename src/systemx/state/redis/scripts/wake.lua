-- Take the wake lock of a sleeping address: one wake cluster-wide.
-- KEYS: 1 sleeper profile, 2 wake lock, 3 (optional) the address's claim hash
-- ARGV: 1 lock token (call id @ node), 2 lock lifetime (ms)
-- Returns {1, profile} to the lock winner, {0, holder token} while another holds the lock,
-- {-1} when the address has no sleeper profile, and (with KEYS[3]) {2, node, node epoch}
-- when the address is claimed: it is awake on that node, nothing to wake.
if KEYS[3] then
  local holder = redis.call('HMGET', KEYS[3], 'node', 'nepoch')
  if holder[1] then
    return {2, holder[1], holder[2] or ''}
  end
end
local profile = redis.call('GET', KEYS[1])
if not profile then
  return {-1}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, profile}
end
return {0, redis.call('GET', KEYS[2]) or ''}
