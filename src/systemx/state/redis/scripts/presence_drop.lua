-- Delete a dead node's presence: its hash and change stream, only while it holds no lease
-- (a node that restarted meanwhile keeps what it wrote since).
-- KEYS: 1 the node's lease, 2 its presence hash, 3 its change stream (one slot: the {node} tag).
-- Returns the number of keys deleted, or -1 when the node holds a lease.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
return redis.call('DEL', KEYS[2], KEYS[3])
