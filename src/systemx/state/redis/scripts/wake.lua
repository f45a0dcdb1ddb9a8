-- Take the wake lock of a sleeping address: one wake cluster-wide.
-- KEYS: 1 sleeper profile, 2 wake lock
-- ARGV: 1 lock token (call id @ node), 2 lock lifetime (ms)
-- Returns {1, profile} to the lock winner, {0, holder token} while another holds the lock,
-- {-1} when the address has no sleeper profile.
local profile = redis.call('GET', KEYS[1])
if not profile then
  return {-1}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, profile}
end
return {0, redis.call('GET', KEYS[2]) or ''}
